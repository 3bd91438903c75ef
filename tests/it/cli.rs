//! The command line as an operator meets it, by running the built binary: `--version`, the
//! examples under every `--help`, `check`'s summary and its refusal, shell completions that a
//! shell accepts and completes with, and a man page that renders.

use std::ffi::OsStr;
use std::path::Path;
use std::process::{Command, Output};

use crate::support::*;

fn rtcgate<I, S>(args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    Command::new(env!("CARGO_BIN_EXE_rtcgate"))
        .args(args)
        .output()
        .expect("run rtcgate")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Asserts a zero exit and returns stdout.
fn ok(out: &Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what}: {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        stdout(out),
        String::from_utf8_lossy(&out.stderr)
    );
    stdout(out)
}

#[test]
fn version_prints_the_crate_version() {
    let want = format!("rtcgate {}\n", env!("CARGO_PKG_VERSION"));
    for flag in ["--version", "-V"] {
        assert_eq!(ok(&rtcgate([flag]), flag), want, "{flag}");
    }
}

#[test]
fn every_help_shows_its_example() {
    let cases: &[(&[&str], &str)] = &[
        (&["--help"], "rtcgate --config /etc/rtcgate/proxy.toml"),
        (
            &["check", "--help"],
            "rtcgate check -c proxy.toml && systemctl reload rtcgate",
        ),
        (&["demo", "--help"], "rtcgate demo"),
        (
            &["demo-backend", "--help"],
            "rtcgate demo-backend --id b1 --listen 127.0.0.1:9001",
        ),
        (
            &["completions", "--help"],
            "rtcgate completions bash > /etc/bash_completion.d/rtcgate",
        ),
        (
            &["man", "--help"],
            "rtcgate man > /usr/local/share/man/man1/rtcgate.1",
        ),
    ];
    for (args, example) in cases {
        let help = ok(&rtcgate(*args), &args.join(" "));
        assert!(
            help.contains(example),
            "{args:?} lacks {example:?}:\n{help}"
        );
    }

    // Where the keys are explained and what the signals do, on the commands that run or check.
    for args in [&["--help"][..], &["check", "--help"], &["demo", "--help"]] {
        let help = ok(&rtcgate(args), &args.join(" "));
        assert!(
            help.contains("Configuration reference (proxy.toml)"),
            "{args:?}:\n{help}"
        );
    }
    for args in [&["--help"][..], &["demo", "--help"]] {
        let help = ok(&rtcgate(args), &args.join(" "));
        assert!(help.contains("SIGHUP reloads"), "{args:?}:\n{help}");
        assert!(
            help.contains("SIGTERM or SIGINT drain"),
            "{args:?}:\n{help}"
        );
    }
    // The top level lists every subcommand.
    let top = ok(&rtcgate(["--help"]), "--help");
    for sub in ["check", "demo", "demo-backend", "completions", "man"] {
        assert!(
            top.lines().any(|l| l.trim_start().starts_with(sub)),
            "{sub} not listed:\n{top}"
        );
    }
}

const TOKEN: &str = "admin-token-not-to-be-printed-0123456789";

/// A config with something of every kind `check` reports: PROXY protocol on `http`, an admin
/// listener with a token, an SNI certificate, rooms and scale hooks.
fn rich_config(dir: &Path) -> std::path::PathBuf {
    let toml = config_toml(
        &[
            ("alpha", "127.0.0.1:9001".parse().expect("addr")),
            ("beta", "127.0.0.2:9002".parse().expect("addr")),
        ],
        "",
        "room_param = \"room\"\n\n[pools.media.scale]\nmin_headroom = 0.2\nup_command = [\"/bin/true\"]\n",
    )
    .replace(
        "http = \"127.0.0.1:0\"\n",
        "http = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\nproxy_protocol = [\"http\"]\n",
    )
    .replace(
        "key = \"key.pem\"\n",
        "key = \"key.pem\"\n\n[[tls.sni]]\nnames = [\"rtc.example.com\"]\ncert = \"cert.pem\"\nkey = \"key.pem\"\n",
    );
    let toml = format!("{toml}\n[admin]\ntoken = \"{TOKEN}\"\ntoken_for_reads = true\n");
    let path = dir.join("proxy.toml");
    std::fs::write(&path, toml).expect("write config");
    path
}

#[test]
fn check_summarises_what_it_validated() {
    let certs = make_certs();
    let path = rich_config(certs.dir.path());
    let out = ok(
        &rtcgate([OsStr::new("check"), "-c".as_ref(), path.as_ref()]),
        "check",
    );
    let has_line = |parts: &[&str]| out.lines().any(|l| parts.iter().all(|p| l.contains(p)));

    // The first line, as it was before the summary (scripts may read it).
    let first = out.lines().next().unwrap_or_default();
    assert_eq!(
        first,
        format!("{}: ok (1 pools, 2 backends)", path.display()),
        "{out}"
    );
    // Listeners, and which one expects a PROXY header.
    assert!(has_line(&["http", "127.0.0.1:", "PROXY protocol"]), "{out}");
    assert!(!has_line(&["https", "PROXY protocol"]), "{out}");
    assert!(has_line(&["admin", "127.0.0.1:"]), "{out}");
    // Certificates: the file, how many, the names in it and when it expires.
    assert!(
        has_line(&[
            "default",
            "cert.pem",
            "1 certificate",
            "localhost",
            "expires"
        ]),
        "{out}"
    );
    assert!(has_line(&["sni", "rtc.example.com", "cert.pem"]), "{out}");
    assert!(has_line(&["ticket keys", "own"]), "{out}");
    // The pool, each backend's id, address, weight and cap.
    assert!(has_line(&["pool media", "hosts *"]), "{out}");
    assert!(
        has_line(&["alpha", "127.0.0.1:9001", "weight 1", "max_sessions 500"]),
        "{out}"
    );
    assert!(has_line(&["beta", "127.0.0.2:9002"]), "{out}");
    assert!(has_line(&["rooms", "on", "?room="]), "{out}");
    assert!(has_line(&["health", "GET /health", "every 2s"]), "{out}");
    assert!(has_line(&["scale", "/bin/true"]), "{out}");
    assert!(has_line(&["discovery", "off"]), "{out}");
    assert!(has_line(&["turn", "off"]), "{out}");
    // The token is set, reads need it, and it is never shown.
    assert!(has_line(&["admin", "token set", "reads need it"]), "{out}");
    assert!(!out.contains(TOKEN), "the admin token was printed:\n{out}");
    assert!(out.lines().count() <= 40, "more than a screen:\n{out}");
}

#[test]
fn check_refuses_a_bad_config_with_exit_1_and_the_key() {
    let certs = make_certs();
    let toml = config_toml(
        &[("alpha", "127.0.0.1:9001".parse().expect("addr"))],
        "",
        "room_balance_factor = 0.5\n",
    );
    let path = certs.dir.path().join("proxy.toml");
    std::fs::write(&path, toml).expect("write config");
    let out = rtcgate([OsStr::new("check"), "--config".as_ref(), path.as_ref()]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("pools.media.room_balance_factor"),
        "{stderr}"
    );
    assert!(out.stdout.is_empty(), "a refused config printed a summary");
}

#[test]
fn bash_completions_parse_and_complete_subcommands() {
    let script = ok(&rtcgate(["completions", "bash"]), "completions bash");
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("rtcgate.bash");
    std::fs::write(&file, &script).expect("write script");

    let syntax = Command::new("bash")
        .arg("-n")
        .arg(&file)
        .output()
        .expect("run bash -n");
    assert!(
        syntax.status.success(),
        "bash -n: {}",
        String::from_utf8_lossy(&syntax.stderr)
    );
    for sub in ["check", "demo-backend", "completions", "man"] {
        assert!(script.contains(sub), "{sub} missing from the script");
    }

    // What Tab does after `rtcgate ch` and after `rtcgate completions `.
    let complete = |words: &str, cword: usize| {
        let prog = format!(
            "source \"$1\"; COMP_WORDS=({words}); COMP_CWORD={cword}; \
             _rtcgate rtcgate \"${{COMP_WORDS[COMP_CWORD]}}\" \"${{COMP_WORDS[COMP_CWORD-1]}}\"; \
             printf '%s\\n' \"${{COMPREPLY[@]}}\""
        );
        let out = Command::new("bash")
            .args(["-c", &prog, "bash"])
            .arg(&file)
            .output()
            .expect("run bash");
        ok(&out, "bash completion")
    };
    assert_eq!(complete("rtcgate ch", 1).trim(), "check");
    let shells = complete("rtcgate completions ''", 2);
    for shell in ["bash", "zsh", "fish"] {
        assert!(shells.lines().any(|l| l == shell), "{shell}:\n{shells}");
    }

    for shell in ["zsh", "fish", "elvish", "powershell"] {
        let s = ok(&rtcgate(["completions", shell]), shell);
        assert!(s.contains("demo-backend"), "{shell}:\n{s}");
    }
}

#[test]
fn man_page_is_roff_and_renders() {
    let page = ok(&rtcgate(["man"]), "man");
    assert!(
        page.lines().take(5).any(|l| l.starts_with(".TH rtcgate 1")),
        "no .TH header:\n{}",
        &page[..page.len().min(400)]
    );
    assert!(page.contains("rtcgate check \\-c proxy.toml"), "{page}");

    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("rtcgate.1");
    std::fs::write(&file, &page).expect("write page");
    let has = |tool: &str| {
        Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    // Rendered as `man` would, where a formatter is installed; CI need not have one.
    let rendered = if has("groff") {
        Command::new("groff")
            .args(["-man", "-Tutf8", "-ww"])
            .arg(&file)
            .output()
            .expect("run groff")
    } else if has("man") {
        Command::new("man")
            .arg("-l")
            .arg(&file)
            .env("MANPAGER", "cat")
            .output()
            .expect("run man")
    } else {
        eprintln!("neither groff nor man installed: the page was not rendered");
        return;
    };
    let text = ok(&rendered, "render the man page");
    let warnings = String::from_utf8_lossy(&rendered.stderr);
    assert!(warnings.trim().is_empty(), "{warnings}");
    assert!(text.contains("demo-backend"), "{text}");
}
