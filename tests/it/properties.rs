//! Property tests (proptest) for what peers control: the Host parser, the pin token parser and
//! the WebSocket frame-boundary tracker. CI runs proptest's default number of cases; the
//! bench-like run sets more:
//!
//! ```sh
//! PROPTEST_CASES=1000000 cargo test --release --test it properties
//! ```

use proptest::prelude::*;
use rtcgate::proxy::frames::Frames;
use rtcgate::proxy::headers::valid_host;
use rtcgate::sticky::{CookiePin, StickyCookie};

use crate::support::*;

/// A reg-name label: what a host name is made of.
fn label() -> impl Strategy<Value = String> {
    "[a-z0-9]([a-z0-9-]{0,14}[a-z0-9])?"
}

fn host_name() -> impl Strategy<Value = String> {
    prop::collection::vec(label(), 1..5).prop_map(|l| l.join("."))
}

fn port() -> impl Strategy<Value = Option<u16>> {
    prop::option::of(any::<u16>())
}

proptest! {
    #[test]
    fn host_names_and_ip_literals_with_ports_are_accepted(
        name in host_name(),
        v6 in any::<std::net::Ipv6Addr>(),
        v4 in any::<std::net::Ipv4Addr>(),
        p in port(),
    ) {
        let with = |h: String| match p {
            Some(p) => format!("{h}:{p}"),
            None => h,
        };
        prop_assert!(valid_host(&with(name.clone())), "{name}");
        prop_assert!(valid_host(&with(format!("[{v6}]"))), "[{v6}]");
        prop_assert!(valid_host(&with(v4.to_string())), "{v4}");
    }

    #[test]
    fn a_host_with_userinfo_path_space_or_a_bad_port_is_refused(
        name in host_name(),
        bad in prop::sample::select(vec!['@', '/', ' ', '?', '#', '\\', '"', '<', '\t', '\u{e9}']),
        at in any::<prop::sample::Index>(),
        junk_port in "[0-9]{0,3}[a-z][0-9a-z]{0,3}",
    ) {
        let i = at.index(name.len() + 1);
        let mut broken = name.clone();
        broken.insert(i.min(broken.len()), bad);
        prop_assert!(!valid_host(&broken), "{broken:?}");
        let bad_port = format!("{name}:{junk_port}");
        prop_assert!(!valid_host(&bad_port), "{bad_port:?}");
    }

    #[test]
    fn the_host_check_never_panics(s in any::<String>()) {
        let _ = valid_host(&s);
    }
}

/// The cookie signer of a test config, made once.
fn cookies() -> &'static StickyCookie {
    static COOKIES: std::sync::OnceLock<StickyCookie> = std::sync::OnceLock::new();
    COOKIES.get_or_init(load_cookies)
}

fn load_cookies() -> StickyCookie {
    let text = config_toml(&[("m1", "127.0.0.1:9001".parse().expect("addr"))], "", "");
    let certs = make_certs();
    let path = certs.dir.path().join("proxy.toml");
    std::fs::write(&path, text).expect("write");
    let config = rtcgate::config::Config::load(&path).expect("config");
    StickyCookie::new(&config.sticky)
}

proptest! {
    #[test]
    fn a_pin_token_verifies_whole_and_never_once_changed(
        backend in "[a-z0-9][a-z0-9._-]{0,30}",
        at in any::<prop::sample::Index>(),
        flip in 1u8..=255,
    ) {
        let c = cookies();
        let now = 1_800_000_000;
        let token = c.sign("media", &backend, now);
        prop_assert_eq!(
            c.verify("media", &token, now),
            CookiePin::Valid { backend: &backend, refresh: false }
        );
        prop_assert!(!matches!(c.verify("other", &token, now), CookiePin::Valid { .. }), "bound to its pool");
        let mut bytes = token.clone().into_bytes();
        let i = at.index(bytes.len());
        bytes[i] ^= flip;
        if let Ok(changed) = String::from_utf8(bytes) {
            prop_assert!(!matches!(c.verify("media", &changed, now), CookiePin::Valid { .. }), "{changed:?}");
        }
        let cut = &token[..at.index(token.len())];
        prop_assert!(!matches!(c.verify("media", cut, now), CookiePin::Valid { .. }), "{cut:?}");
    }

    #[test]
    fn any_token_text_is_read_without_panicking(s in any::<String>()) {
        let c = cookies();
        let _ = c.verify("media", &s, 1_800_000_000);
        let _ = c.verify_url_token("media", &s, 1_800_000_000);
    }
}

/// One WebSocket frame as a server or a client writes it: FIN and opcode, the mask bit, the
/// length in 7, 16 or 64 bits.
#[derive(Debug, Clone)]
struct Frame {
    opcode: u8,
    masked: bool,
    len: usize,
    /// Use the 64-bit length form even for a length that would fit a shorter one.
    wide: bool,
}

fn frame() -> impl Strategy<Value = Frame> {
    let len = prop_oneof![
        8 => 0usize..126,
        3 => 126usize..2000,
        1 => 65_536usize..70_000,
    ];
    (
        prop::sample::select(vec![0x1u8, 0x2, 0x0, 0x8, 0x9, 0xA]),
        any::<bool>(),
        len,
        any::<bool>(),
    )
        .prop_map(|(opcode, masked, len, wide)| Frame {
            opcode,
            masked,
            len,
            wide,
        })
}

fn encode(f: &Frame, out: &mut Vec<u8>) {
    out.push(0x80 | f.opcode);
    let mask = if f.masked { 0x80 } else { 0 };
    if f.wide {
        out.push(mask | 127);
        out.extend_from_slice(&(f.len as u64).to_be_bytes());
    } else if f.len < 126 {
        out.push(mask | f.len as u8);
    } else if f.len <= 0xffff {
        out.push(mask | 126);
        out.extend_from_slice(&(f.len as u16).to_be_bytes());
    } else {
        out.push(mask | 127);
        out.extend_from_slice(&(f.len as u64).to_be_bytes());
    }
    if f.masked {
        out.extend_from_slice(&[1, 2, 3, 4]);
    }
    // Payload bytes that look like headers, to catch a tracker that reads them as such.
    out.extend(std::iter::repeat_n(0x81u8, f.len));
}

proptest! {
    #[test]
    fn the_frame_tracker_finds_every_boundary_however_the_stream_is_cut(
        frames in prop::collection::vec(frame(), 1..12),
        cuts in prop::collection::vec(1usize..5000, 1..40),
    ) {
        let mut stream = Vec::new();
        let mut ends = std::collections::BTreeSet::new();
        let mut closes = std::collections::BTreeSet::new();
        for f in &frames {
            encode(f, &mut stream);
            ends.insert(stream.len());
            if f.opcode == 0x8 {
                closes.insert(stream.len());
            }
        }
        let mut t = Frames::default();
        let (mut at, mut cut) = (0, cuts.iter().cycle());
        while at < stream.len() {
            let n = (*cut.next().unwrap_or(&1)).min(stream.len() - at);
            // Reads never go past the next boundary when asked, as the pump reads them.
            let n = if t.at_boundary() { n } else { n.min(t.until_boundary()) };
            t.advance(&stream[at..at + n]);
            at += n;
            prop_assert_eq!(t.at_boundary(), ends.contains(&at), "at byte {} of {}", at, stream.len());
            if ends.contains(&at) {
                prop_assert_eq!(t.saw_close, closes.contains(&at));
            }
        }
    }
}
