//! The command line: the one [`Cli`] definition (from which `--help`, the shell completions and
//! the man page are all generated, so they cannot disagree), and what `check` prints.
//!
//! Running, logging and exit codes stay in `main.rs`; parsing and validating the config stay
//! in the library.

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use clap::{CommandFactory, Parser, Subcommand, ValueHint};
use clap_complete::Shell;
use rtcgate::config::{Config, DiscoveryMode, HealthConfig, HostPattern, PoolConfig, TurnAuth};
use rtcgate::settings::x509;

/// Where the config keys are explained: under every `--help` of the commands that read it.
macro_rules! config_reference {
    () => {
        "Configuration: every key of proxy.toml is explained in README.md, section\n\
         \"Configuration reference (proxy.toml)\"."
    };
}

/// The signals the running proxy takes.
macro_rules! signals {
    () => {
        "Signals: SIGHUP reloads the config (so do edits of the file and POST /reload on the\n\
         admin listener); SIGTERM or SIGINT drain (limits.shutdown_delay, then\n\
         limits.shutdown_grace), then stop."
    };
}

const MAIN_HELP: &str = concat!(
    "Examples:
  rtcgate --config /etc/rtcgate/proxy.toml      run
  rtcgate check -c proxy.toml && systemctl reload rtcgate
  rtcgate demo                                  try it: three demo media servers behind it
  rtcgate completions bash > /etc/bash_completion.d/rtcgate
  rtcgate man > /usr/local/share/man/man1/rtcgate.1

",
    config_reference!(),
    "\n",
    signals!()
);

const CHECK_HELP: &str = concat!(
    "Prints what it validated (listeners, certificates, pools and their backends, discovery,
TURN, whether an admin token is set) to stdout. Nothing is bound, nothing is started.

Example:
  rtcgate check -c proxy.toml && systemctl reload rtcgate

",
    config_reference!()
);

const DEMO_HELP: &str = concat!(
    "Example:
  rtcgate demo          with ./proxy.toml (the shipped one); then open https://localhost:8443/

",
    config_reference!(),
    "\n",
    signals!()
);

const DEMO_BACKEND_HELP: &str = "\
Example:
  rtcgate demo-backend --id b1 --listen 127.0.0.1:9001

Signals: SIGTERM or SIGINT stop it.";

const COMPLETIONS_HELP: &str = "\
Examples:
  rtcgate completions bash > /etc/bash_completion.d/rtcgate
  rtcgate completions zsh > /usr/local/share/zsh/site-functions/_rtcgate
  rtcgate completions fish > ~/.config/fish/completions/rtcgate.fish";

const MAN_HELP: &str = "\
Example:
  rtcgate man > /usr/local/share/man/man1/rtcgate.1 && man rtcgate";

#[derive(Parser)]
#[command(
    name = "rtcgate",
    version,
    about = "A sticky reverse proxy for pools of WebRTC servers",
    after_help = MAIN_HELP
)]
pub struct Cli {
    /// The configuration file.
    #[arg(long, short, global = true, default_value = "proxy.toml", value_hint = ValueHint::FilePath)]
    pub config: PathBuf,
    #[command(subcommand)]
    pub command: Option<Command>,
}

// `completions` and `man` are listed in `--help`, not hidden: an operator finds them where
// they look first, and packagers need no README to ship them.
#[derive(Subcommand)]
pub enum Command {
    /// Validate the configuration and exit: 0 when good, 1 with the offending key when not.
    #[command(after_help = CHECK_HELP)]
    Check,
    /// Run with built-in demo media servers on the config's loopback backend addresses.
    #[command(after_help = DEMO_HELP)]
    Demo,
    /// Run one demo media server alone, no proxy (a backend process for load tests).
    #[command(after_help = DEMO_BACKEND_HELP)]
    DemoBackend {
        /// The id it answers with.
        #[arg(long, value_name = "ID")]
        id: String,
        /// Where it listens, IP:port.
        #[arg(long, value_name = "IP:PORT")]
        listen: SocketAddr,
    },
    /// Print the shell completion script for SHELL to stdout.
    #[command(after_help = COMPLETIONS_HELP)]
    Completions {
        #[arg(value_enum)]
        shell: Shell,
    },
    /// Print the man page (roff) to stdout.
    #[command(after_help = MAN_HELP)]
    Man,
}

/// The completion script for `shell`.
pub fn completions(shell: Shell) -> Vec<u8> {
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "rtcgate", &mut out);
    out
}

/// The man page, roff.
pub fn man() -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    clap_mangen::Man::new(Cli::command()).render(&mut out)?;
    Ok(out)
}

/// Writes `bytes` to stdout. A reader that went away (`| head`) is not a failure.
pub fn print(bytes: &[u8]) -> ExitCode {
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: stdout: {e}");
            ExitCode::FAILURE
        }
    }
}

/// At most this many backends are listed per pool, so the summary stays on one screen.
const BACKENDS_LISTED: usize = 20;

/// What `check` validated, for a person: one screen, the first line as it always was.
pub fn summary(path: &Path, config: &Config, now: SystemTime) -> String {
    let mut s = String::new();
    let backends: usize = config.pools.iter().map(|p| p.backends.len()).sum();
    // Writing to a String cannot fail.
    let _ = writeln!(
        s,
        "{}: ok ({} pools, {backends} backends)",
        path.display(),
        config.pools.len()
    );
    let _ = writeln!(s, "config    {}", config.source.display());
    listeners(&mut s, config);
    tls(&mut s, config, now);
    for pool in &config.pools {
        self::pool(&mut s, pool);
    }
    extras(&mut s, config);
    s
}

fn listeners(s: &mut String, config: &Config) {
    let l = &config.listen;
    let rows = [
        ("https", l.https, l.proxy_protocol.https),
        ("http", l.http, l.proxy_protocol.http),
        ("admin", l.admin, false),
    ];
    let _ = writeln!(s, "listen");
    for (name, addr, proxy) in rows {
        let Some(addr) = addr else {
            let _ = writeln!(s, "  {name:<6} off");
            continue;
        };
        let proxy = if proxy { "  PROXY protocol" } else { "" };
        let _ = writeln!(s, "  {name:<6} {addr}{proxy}");
    }
    if !l.trusted_forwarders.is_empty() {
        let nets: Vec<String> = l.trusted_forwarders.iter().map(|n| n.to_string()).collect();
        let _ = writeln!(s, "  trusted forwarders {}", nets.join(", "));
    }
}

fn tls(s: &mut String, config: &Config, now: SystemTime) {
    let Some(files) = &config.tls else {
        let _ = writeln!(s, "tls       off");
        return;
    };
    let _ = writeln!(s, "tls");
    let _ = writeln!(s, "  default  {}", chain(&files.default.cert, now));
    for sni in &files.sni {
        let _ = writeln!(
            s,
            "  sni {}  {}",
            sni.names.join(", "),
            chain(&sni.files.cert, now)
        );
    }
    match &files.ticket_keys {
        Some(path) => {
            let _ = writeln!(s, "  ticket keys  {}", path.display());
        }
        None => {
            let _ = writeln!(s, "  ticket keys  the process's own (random, rotated)");
        }
    }
}

/// `cert.pem: 2 certificates, CN localhost, names a.example, b.example, expires … (in 80 days)`
fn chain(path: &Path, now: SystemTime) -> String {
    let info = match x509::describe(path) {
        Ok(info) => info,
        // Already read once by the TLS config; a file that changed since says so here.
        Err(e) => return e,
    };
    let mut s = format!(
        "{}: {} certificate{}",
        path.display(),
        info.certificates,
        if info.certificates == 1 { "" } else { "s" }
    );
    if let Some(cn) = &info.common_name {
        let _ = write!(s, ", CN {cn}");
    }
    if info.dns_names.is_empty() {
        s.push_str(", no DNS names");
    } else {
        let _ = write!(s, ", names {}", info.dns_names.join(" "));
    }
    if let Some(t) = info.not_after {
        let when = humantime::format_rfc3339_seconds(t);
        match t.duration_since(now) {
            Ok(left) => {
                let _ = write!(s, ", expires {when} (in {} days)", left.as_secs() / 86_400);
            }
            Err(_) => {
                let _ = write!(s, ", EXPIRED {when}");
            }
        }
    }
    s
}

fn pool(s: &mut String, p: &PoolConfig) {
    let hosts: Vec<String> = p.hosts.iter().map(host).collect();
    let _ = writeln!(s, "pool {}  hosts {}", p.name, hosts.join(" "));
    let dns = match p.dns_backends.len() {
        0 => String::new(),
        n => format!(", and {n} DNS name{}", if n == 1 { "" } else { "s" }),
    };
    let _ = writeln!(s, "  backends {}{dns}", p.backends.len());
    for b in p.backends.iter().take(BACKENDS_LISTED) {
        let rooms = if b.max_rooms > 0 {
            format!("  max_rooms {}", b.max_rooms)
        } else {
            String::new()
        };
        let check = if b.check_address != b.address {
            format!("  checked at {}", b.check_address)
        } else {
            String::new()
        };
        let _ = writeln!(
            s,
            "    {:<12} {:<22} weight {:<4} max_sessions {}{rooms}{check}",
            b.id,
            b.address.to_string(),
            b.weight,
            b.max_sessions
        );
    }
    if p.backends.len() > BACKENDS_LISTED {
        let _ = writeln!(s, "    … and {} more", p.backends.len() - BACKENDS_LISTED);
    }
    for d in &p.dns_backends {
        let _ = writeln!(
            s,
            "    {:<12} DNS {} (weight {}, max_sessions {})",
            d.id, d.lookup, d.weight, d.max_sessions
        );
    }
    match &p.room_param {
        Some(param) => {
            let cap = if p.max_rooms > 0 {
                format!(", at most {} per backend", p.max_rooms)
            } else {
                String::new()
            };
            let _ = writeln!(s, "  rooms    on: ?{param}={cap}");
        }
        None => {
            let _ = writeln!(s, "  rooms    off");
        }
    }
    match &p.machine_param {
        Some(param) => {
            let _ = writeln!(s, "  machines on: ?{param}= (machine pins)");
        }
        None => {
            let _ = writeln!(s, "  machines off");
        }
    }
    let _ = writeln!(s, "  health   {}", health(&p.health));
    match &p.scale {
        Some(sc) => {
            let up = if sc.up_command.is_empty() || sc.min_headroom == 0.0 {
                "up never".to_string()
            } else {
                format!(
                    "up below {} headroom for {}: {}",
                    sc.min_headroom,
                    dur(sc.sustain),
                    sc.up_command.join(" ")
                )
            };
            let down = if sc.idle_after.is_zero() {
                "down never".to_string()
            } else {
                format!(
                    "down after {} idle (min_backends {})",
                    dur(sc.idle_after),
                    sc.min_backends
                )
            };
            let _ = writeln!(s, "  scale    {up}; {down}");
        }
        None => {
            let _ = writeln!(s, "  scale    off");
        }
    }
}

fn host(h: &HostPattern) -> String {
    match h {
        HostPattern::Any => "*".to_string(),
        HostPattern::Suffix(suffix) => format!("*{suffix}"),
        HostPattern::Exact(name) => name.clone(),
    }
}

fn health(h: &HealthConfig) -> String {
    let what = match &h.path {
        Some(path) => format!("GET {path}"),
        None => "TCP connect".to_string(),
    };
    let port = if h.port != 0 {
        format!(" on port {}", h.port)
    } else {
        String::new()
    };
    format!(
        "{what}{port} every {}, timeout {}, rise {} fall {}",
        dur(h.interval),
        dur(h.timeout),
        h.rise,
        h.fall
    )
}

fn extras(s: &mut String, config: &Config) {
    match &config.discovery {
        Some(d) => {
            let mode = match d.mode {
                DiscoveryMode::Proxy => "proxy",
                DiscoveryMode::Direct => "direct",
            };
            let _ = writeln!(s, "discovery on: {} ({mode} mode)", d.path);
        }
        None => {
            let _ = writeln!(s, "discovery off");
        }
    }
    match &config.turn {
        Some(t) => {
            let auth = match t.auth {
                TurnAuth::Session => "session",
                TurnAuth::Forward => "forward",
                TurnAuth::None => "none (anyone)",
            };
            let urls: Vec<&str> = t.urls.iter().map(|u| u.url.as_str()).collect();
            let _ = writeln!(
                s,
                "turn      on: {} (auth {auth}, ttl {}) {}",
                t.path,
                dur(t.ttl),
                urls.join(" ")
            );
        }
        None => {
            let _ = writeln!(s, "turn      off");
        }
    }
    // Never the token itself.
    let admin = &config.admin;
    if config.listen.admin.is_none() {
        let _ = writeln!(s, "admin     off");
        return;
    }
    let token = match (&admin.token, admin.token_for_reads) {
        (Some(_), true) => "set, reads need it too (token_for_reads)",
        (Some(_), false) => "set, for changes only (reads open)",
        (None, _) => "not set: whoever reaches the admin listener may change backends",
    };
    let _ = writeln!(s, "admin     token {token}");
}

fn dur(d: Duration) -> humantime::FormattedDuration {
    humantime::format_duration(d)
}
