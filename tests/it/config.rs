//! Bad configuration is refused with the key and the file named; `rtcgate check` says so too.

use std::path::Path;
use std::process::Command;

use crate::support::*;
use rtcgate::config::Config;

/// A good config in a folder with its certificates; returns (folder, text).
fn good() -> (TestCerts, String) {
    let certs = make_certs();
    let text = config_toml(&[("m1", "127.0.0.1:9001".parse().expect("addr"))], "", "");
    (certs, text)
}

fn load(dir: &Path, text: &str) -> Result<Config, String> {
    let path = dir.join("proxy.toml");
    std::fs::write(&path, text).expect("write");
    Config::load(&path).map_err(|e| e.to_string())
}

#[test]
fn the_good_config_loads() {
    let (certs, text) = good();
    let c = load(certs.dir.path(), &text).expect("good config");
    assert_eq!(c.pools.len(), 1);
    assert_eq!(c.pools[0].backends[0].id, "m1");
    assert_eq!(c.pools[0].max_sessions, 500, "default max_sessions");
}

#[test]
fn unset_limits_take_the_defaults_the_readme_gives() {
    let (certs, text) = good();
    let limits = load(certs.dir.path(), &text).expect("good config").limits;
    let secs = std::time::Duration::from_secs;
    assert_eq!(limits.workers, 0, "one worker per core");
    assert_eq!(limits.max_connections, 10_000);
    assert_eq!(limits.max_header_size, 65_536);
    assert_eq!(limits.tls_handshake_timeout, secs(10));
    assert_eq!(limits.header_read_timeout, secs(10));
    assert_eq!(limits.idle_timeout, secs(60));
    assert_eq!(limits.connect_timeout, secs(5));
    assert_eq!(limits.response_timeout, secs(60));
    assert_eq!(limits.shutdown_grace, secs(30));
    assert_eq!(limits.shutdown_delay, secs(0));
    assert_eq!(limits.tunnel_idle_timeout, secs(3600));
    assert_eq!(limits.upstream_idle_per_backend, 256);
    assert_eq!(limits.upstream_idle_timeout, secs(30));
    assert_eq!(limits.h2_control_frames_per_second, 1000);
    assert_eq!(limits.buffer_budget, 256 << 20);
}

#[test]
fn each_bad_value_names_its_key_and_file() {
    let (certs, text) = good();
    let cases: &[(&str, &str, &str)] = &[
        // (replace, with, key the error must name)
        (
            "[limits]\n",
            "[limits]\nheader_read_timout = \"1s\"\n",
            "header_read_timout",
        ),
        (
            "address = \"127.0.0.1:9001\"",
            "address = \"127.0.0.1:99999\"",
            "pools.media.backends[0].address",
        ),
        (
            "address = \"127.0.0.1:9001\"",
            "address = \"media-1\"",
            "pools.media.backends[0].address",
        ),
        (
            "[limits]\n",
            "[limits]\nconnect_timeout = \"5 parsecs\"\n",
            "limits.connect_timeout",
        ),
        (
            "[limits]\n",
            "[limits]\npin_workers = \"sometimes\"\n",
            "pin_workers",
        ),
        ("cert = \"cert.pem\"", "cert = \"missing.pem\"", "tls.cert"),
        ("key = \"key.pem\"", "key = \"nokey.pem\"", "tls.key"),
        (
            "t1:test-secret-0123456789abcdef0123456789",
            "t1:short",
            "sticky.keys[0]",
        ),
        (
            "hosts = [\"*\"]",
            "hosts = [\"*\"]\nmax_sessions = 0",
            "pools.media.max_sessions",
        ),
        (
            "[[pools.media.backends]]",
            "[pools.media.health]\ntimeout = \"5s\"\ninterval = \"1s\"\n[[pools.media.backends]]",
            "pools.media.health.timeout",
        ),
        (
            "https = \"127.0.0.1:0\"",
            "https = \"127.0.0.1:0\"\nhttps2 = \"x\"",
            "https2",
        ),
        (
            "http = \"127.0.0.1:0\"",
            "http = \"127.0.0.1:8080\"\nadmin = \"0.0.0.0:8080\"",
            "listen.admin",
        ),
    ];
    for (from, to, key) in cases {
        assert!(text.contains(from), "test case does not apply: {from}");
        let bad = text.replacen(from, to, 1);
        let err = load(certs.dir.path(), &bad).expect_err(&format!("accepted: {to}"));
        assert!(
            err.contains(key),
            "error for {to:?} does not name {key}: {err}"
        );
        assert!(
            err.contains("proxy.toml"),
            "error does not name the file: {err}"
        );
    }
}

/// The listeners share ports with SO_REUSEPORT, so two of them on one port would silently split
/// its connections: the config refuses it instead, and still takes distinct or ephemeral ports.
#[test]
fn two_listeners_on_one_port_are_refused() {
    let (certs, text) = good();
    let on = |https: &str, http: &str| {
        text.replacen(
            "https = \"127.0.0.1:0\"",
            &format!("https = \"{https}\""),
            1,
        )
        .replacen("http = \"127.0.0.1:0\"", &format!("http = \"{http}\""), 1)
    };
    for (https, http) in [
        ("127.0.0.1:8443", "127.0.0.1:8443"),
        ("0.0.0.0:8443", "127.0.0.1:8443"),
        ("127.0.0.1:8443", "[::]:8443"),
        ("127.0.0.1:8443", "[::ffff:127.0.0.1]:8443"),
        ("[::ffff:0.0.0.0]:8443", "10.0.0.5:8443"),
    ] {
        let err =
            load(certs.dir.path(), &on(https, http)).expect_err(&format!("{https} and {http}"));
        assert!(
            err.contains("listen.http") && err.contains("overlaps listen.https"),
            "{err}"
        );
    }
    for (https, http) in [
        ("127.0.0.1:8443", "127.0.0.1:8080"),
        ("127.0.0.1:8443", "127.0.0.2:8443"),
        ("127.0.0.1:0", "127.0.0.1:0"),
        ("0.0.0.0:8443", "[::1]:8443"),
    ] {
        load(certs.dir.path(), &on(https, http))
            .unwrap_or_else(|e| panic!("{https} and {http}: {e}"));
    }
}

#[test]
fn rtcgate_check_exits_zero_on_good_and_names_the_key_on_bad() {
    let (certs, text) = good();
    let path = certs.dir.path().join("proxy.toml");
    std::fs::write(&path, &text).expect("write");
    let ok = Command::new(env!("CARGO_BIN_EXE_rtcgate"))
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .expect("run rtcgate check");
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );

    std::fs::write(
        &path,
        text.replace("[limits]\n", "[limits]\nidle_timeout = \"soon\"\n"),
    )
    .expect("write");
    let bad = Command::new(env!("CARGO_BIN_EXE_rtcgate"))
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .expect("run rtcgate check");
    assert!(!bad.status.success());
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(stderr.contains("limits.idle_timeout"), "{stderr}");
}

#[test]
fn the_shipped_proxy_toml_is_valid() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let c = Config::load(&root.join("proxy.toml")).unwrap_or_else(|e| panic!("{e}"));
    rtcgate::settings::tls::server_config(&c).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.pools[0].backends.len(), 3);
}

/// A health check port, per pool or per backend, moves the check and nothing else: traffic
/// still goes to the backend's address.
#[test]
fn health_ports_move_the_check_not_the_traffic() {
    let certs = make_certs();
    let toml = config_toml(
        &[
            ("own", "127.0.0.1:9001".parse().expect("addr")),
            ("pooled", "127.0.0.1:9002".parse().expect("addr")),
        ],
        "",
        "",
    );
    let toml = toml.replace(
        "address = \"127.0.0.1:9001\"\n",
        "address = \"127.0.0.1:9001\"\nhealth_port = 7088\n",
    );
    let c = load(certs.dir.path(), &toml).expect("per backend");
    let b = &c.pools[0].backends;
    assert_eq!(b[0].address.port(), 9001);
    assert_eq!(b[0].check_address.port(), 7088);
    assert_eq!(b[1].check_address, b[1].address, "no port named: its own");

    let pooled = toml.replacen(
        "[[pools.media.backends]]",
        "[pools.media.health]\nport = 8088\n[[pools.media.backends]]",
        1,
    );
    let c = load(certs.dir.path(), &pooled).expect("per pool");
    let b = &c.pools[0].backends;
    assert_eq!(
        b[0].check_address.port(),
        7088,
        "the backend's own beats the pool's"
    );
    assert_eq!(b[1].check_address.port(), 8088);
    assert_eq!(b[1].address.port(), 9002);

    let err = load(certs.dir.path(), &toml.replace("7088", "70000")).expect_err("too big");
    assert!(err.contains("health_port"), "{err}");
}

/// The configs under `examples/` stay valid as the config grows.
#[test]
fn the_shipped_examples_are_valid() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).expect("examples/") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "toml") {
            Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
            rtcgate::settings::tls::server_config(&Config::load(&path).expect("config"))
                .unwrap_or_else(|e| panic!("{e}"));
            checked += 1;
        }
    }
    assert!(checked >= 1, "no example in {}", dir.display());
}

#[test]
fn turn_and_discovery_settings_are_checked_with_their_keys() {
    let (certs, text) = good();
    let turn = |urls: &str| {
        format!("{text}\n[turn]\npath = \"/turn\"\nsecret = \"a-turn-secret-0123456789\"\nurls = [{urls}]\n")
    };
    let c = load(
        certs.dir.path(),
        &turn("\"turn:turn.example.com?transport=udp\", \"turns:t.example.com\", \"turn:[::1]:3479?transport=tcp\", \"stun:s.example.com:19302\""),
    )
    .expect("good TURN URLs");
    let urls = c.turn.expect("[turn] on").urls;
    let seen: Vec<(&str, u16, bool)> = urls
        .iter()
        .map(|u| (u.host.as_str(), u.port, u.tcp))
        .collect();
    assert_eq!(
        seen,
        [
            ("turn.example.com", 3478, false),
            ("t.example.com", 5349, true),
            ("::1", 3479, true),
            ("s.example.com", 19302, false)
        ]
    );
    for bad in [
        "http://x",
        "turn:",
        "turn:x:0",
        "turn:x?transport=sctp",
        "stun:x?transport=udp",
        "turns:x?transport=udp",
    ] {
        let err = load(certs.dir.path(), &turn(&format!("\"{bad}\""))).expect_err(bad);
        assert!(err.contains("turn.urls[0]"), "{bad}: {err}");
    }
    let short =
        text.clone() + "\n[turn]\npath = \"/turn\"\nsecret = \"short\"\nurls = [\"stun:x\"]\n";
    assert!(load(certs.dir.path(), &short)
        .expect_err("short")
        .contains("turn.secret"));
    let forward = turn("\"stun:x\"") + "auth = \"forward\"\n";
    assert!(load(certs.dir.path(), &forward)
        .expect_err("no url")
        .contains("turn.auth_url"));
    let debug = format!(
        "{:?}",
        load(certs.dir.path(), &turn("\"stun:x\""))
            .expect("good")
            .turn
    );
    assert!(
        !debug.contains("a-turn-secret"),
        "Debug shows the secret: {debug}"
    );
    for (lines, key) in [
        ("path = \"rtcloadbalance\"", "discovery.path"),
        (
            "path = \"/x\"\ncors_origins = [\"app.example.com\"]",
            "discovery.cors_origins[0]",
        ),
        (
            "path = \"/x\"\npublic_host = \"a b\"",
            "discovery.public_host",
        ),
        ("path = \"/x\"\nmode = \"direct\"", "pools.media.backends"),
    ] {
        let err =
            load(certs.dir.path(), &format!("{text}\n[discovery]\n{lines}\n")).expect_err(key);
        assert!(err.contains(key), "{key}: {err}");
    }
}

/// The Kubernetes example's proxy.toml (the Secret's copy) loads, its certificates beside it.
#[test]
fn the_kubernetes_example_config_is_valid() {
    let certs = make_certs();
    let dir = certs.dir.path();
    std::fs::create_dir(dir.join("tls")).expect("tls/");
    std::fs::copy(dir.join("cert.pem"), dir.join("tls/tls.crt")).expect("cert");
    std::fs::copy(dir.join("key.pem"), dir.join("tls/tls.key")).expect("key");
    let example =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/kubernetes/proxy.toml");
    let text = std::fs::read_to_string(&example).expect("examples/kubernetes/proxy.toml");
    let c = load(dir, &text).unwrap_or_else(|e| panic!("{e}"));
    rtcgate::settings::tls::server_config(&c).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        c.pools[0].dns_backends.len(),
        1,
        "the media StatefulSet, by SRV"
    );
    let secret =
        std::fs::read_to_string(example.with_file_name("secret-config.yaml")).expect("secret");
    let embedded: String = secret
        .split_once("proxy.toml: |\n")
        .expect("the Secret's proxy.toml")
        .1
        .lines()
        .map(|l| format!("{}\n", l.strip_prefix("    ").unwrap_or(l)))
        .collect();
    assert_eq!(
        embedded.trim_end(),
        text.trim_end(),
        "the Secret carries the same proxy.toml"
    );
}

#[test]
fn backends_named_by_dns_and_the_dns_table_are_checked_with_their_keys() {
    let (certs, text) = good();
    let named = |address: &str| text.replace("127.0.0.1:9001", address);
    let c = load(certs.dir.path(), &named("Media.Example.Internal:8188")).expect("a name");
    assert!(c.pools[0].backends.is_empty(), "resolved at run time");
    assert_eq!(
        c.pools[0].dns_backends[0].lookup.to_string(),
        "media.example.internal:8188"
    );
    let c = load(certs.dir.path(), &named("_janus._tcp.media.internal")).expect("an SRV name");
    assert_eq!(
        c.pools[0].dns_backends[0].lookup.to_string(),
        "_janus._tcp.media.internal"
    );
    assert_eq!(
        c.dns.interval,
        std::time::Duration::from_secs(10),
        "default interval"
    );
    for bad in [
        "media.internal",
        "media.internal:0",
        "a b.internal:80",
        "x..y:80",
        "_srv._tcp.a b",
    ] {
        let err = load(certs.dir.path(), &named(bad)).expect_err(bad);
        assert!(
            err.contains("pools.media.backends[0].address"),
            "{bad}: {err}"
        );
        assert!(
            err.contains("SRV name"),
            "the error says what to write: {err}"
        );
    }
    let with_url = named("media.internal:80").replace(
        "address = \"media.internal:80\"",
        "address = \"media.internal:80\"\npublic_url = \"wss://m.example.com/\"",
    );
    let err = load(certs.dir.path(), &with_url).expect_err("one URL for many servers");
    assert!(err.contains("pools.media.backends[0].public_url"), "{err}");
    let direct = format!(
        "{}\n[discovery]\npath = \"/x\"\nmode = \"direct\"\n",
        named("media.internal:80")
    );
    let err = load(certs.dir.path(), &direct).expect_err("direct mode needs a URL per server");
    assert!(err.contains("named by DNS"), "{err}");
    for (lines, key) in [
        ("nameservers = [\"dns.example\"]", "dns.nameservers[0]"),
        ("interval = \"10ms\"", "dns.interval"),
        ("interval = \"1s\"\ntimeout = \"2s\"", "dns.timeout"),
        ("resolver = \"x\"", "resolver"),
    ] {
        let err = load(certs.dir.path(), &format!("{text}\n[dns]\n{lines}\n")).expect_err(key);
        assert!(err.contains(key), "{key}: {err}");
    }
    let c = load(
        certs.dir.path(),
        &format!("{text}\n[dns]\nnameservers = [\"10.96.0.10\", \"127.0.0.1:8600\"]\n"),
    )
    .expect("name servers");
    assert_eq!(c.dns.nameservers[0].port(), 53, "port 53 unless given");
    assert_eq!(c.dns.nameservers[1].port(), 8600);
}
