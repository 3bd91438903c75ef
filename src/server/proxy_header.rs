//! The PROXY protocol header (v1 text, v2 binary) that an L4 balancer (HAProxy `send-proxy`,
//! a cloud network load balancer, …) puts before a connection's bytes, naming the client. Parsed
//! by the `ppp` crate; read here without consuming a byte past it, bounded in size (and, by the
//! caller, in time).

use std::net::SocketAddr;
use std::time::Duration;

use ppp::{v1, v2, HeaderResult, PartialResult};
use tokio::net::TcpStream;

/// The largest header taken: v1's 107 bytes, or v2 with room for the usual TLVs.
const MAX_HEADER: usize = 1024;

/// The longest v1 line (the protocol's own limit).
const V1_MAX: usize = 107;

/// How long to wait between looks at a header that has not all arrived (it nearly always comes
/// in the connection's first segment).
const PARTIAL_WAIT: Duration = Duration::from_millis(5);

/// Reads the PROXY header at the start of `stream`; returns the client it names, or `peer`
/// for a header that names none (v1 `UNKNOWN`, v2 `LOCAL`: the balancer's own checks).
pub async fn read(stream: &mut TcpStream, peer: SocketAddr) -> Result<SocketAddr, String> {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; MAX_HEADER];
    loop {
        let n = stream.peek(&mut buf).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("closed before a PROXY header".into());
        }
        match examine(&buf[..n], n == buf.len()) {
            Look::Incomplete => tokio::time::sleep(PARTIAL_WAIT).await,
            Look::Bad(why) => return Err(why),
            Look::Header { len, client } => {
                stream
                    .read_exact(&mut buf[..len])
                    .await
                    .map_err(|e| e.to_string())?;
                return Ok(client.unwrap_or(peer));
            }
        }
    }
}

/// What the first bytes of a connection say.
#[derive(Debug, PartialEq, Eq)]
enum Look {
    /// A header that may still be arriving.
    Incomplete,
    /// Not a PROXY header, and no more bytes will make it one.
    Bad(String),
    /// A whole header of `len` bytes, naming `client` (none for v1 `UNKNOWN`, v2 `LOCAL`).
    Header {
        len: usize,
        client: Option<SocketAddr>,
    },
}

/// Looks at the bytes `seen` so far; `full` when they fill the largest header taken.
fn examine(seen: &[u8], full: bool) -> Look {
    let parsed = HeaderResult::parse(seen);
    // A v1 line is judged once it has ended (or has passed its 107 bytes): before that, `ppp`
    // may call a line cut short bad ("PROXY TCP4 … 0 " has an empty port), and only a header
    // still arriving is waited for.
    let v1_ended = seen.contains(&b'\n') || seen.len() >= V1_MAX;
    let v1_so_far = seen.starts_with(b"PROXY ") || b"PROXY ".starts_with(seen);
    if matches!(parsed, HeaderResult::V1(Err(_))) && v1_so_far && !v1_ended {
        return if full {
            Look::Bad(format!("a PROXY header longer than {MAX_HEADER} bytes"))
        } else {
            Look::Incomplete
        };
    }
    if parsed.is_incomplete() {
        if seen.starts_with(b"PROXY ") && v1_ended {
            return Look::Bad("not a PROXY header: a malformed v1 line".into());
        }
        if full {
            return Look::Bad(format!("a PROXY header longer than {MAX_HEADER} bytes"));
        }
        return Look::Incomplete;
    }
    match parsed {
        HeaderResult::V1(Ok(h)) => Look::Header {
            len: h.header.len(),
            client: v1_client(&h.addresses),
        },
        HeaderResult::V2(Ok(h)) => Look::Header {
            len: h.len(),
            client: v2_client(&h.addresses),
        },
        HeaderResult::V1(Err(e)) => Look::Bad(format!("not a PROXY header: {e}")),
        HeaderResult::V2(Err(e)) => Look::Bad(format!("not a PROXY header: {e}")),
    }
}

fn v1_client(a: &v1::Addresses) -> Option<SocketAddr> {
    match a {
        v1::Addresses::Tcp4(a) => Some((a.source_address, a.source_port).into()),
        v1::Addresses::Tcp6(a) => Some((a.source_address, a.source_port).into()),
        v1::Addresses::Unknown => None,
    }
}

fn v2_client(a: &v2::Addresses) -> Option<SocketAddr> {
    match a {
        v2::Addresses::IPv4(a) => Some((a.source_address, a.source_port).into()),
        v2::Addresses::IPv6(a) => Some((a.source_address, a.source_port).into()),
        v2::Addresses::Unspecified | v2::Addresses::Unix(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    fn ip() -> impl Strategy<Value = IpAddr> {
        prop_oneof![
            any::<[u8; 4]>().prop_map(|o| IpAddr::V4(Ipv4Addr::from(o))),
            any::<[u8; 16]>().prop_map(|o| IpAddr::V6(Ipv6Addr::from(o))),
        ]
    }

    /// A header naming `source` (to a destination of the same family), v1 or v2.
    fn header(source: SocketAddr, v2: bool) -> Vec<u8> {
        let destination: SocketAddr = match source {
            SocketAddr::V4(_) => "10.0.0.1:443".parse().unwrap_or(source),
            SocketAddr::V6(_) => "[2001:db8::1]:443".parse().unwrap_or(source),
        };
        if v2 {
            v2::Builder::with_addresses(
                v2::Version::Two | v2::Command::Proxy,
                v2::Protocol::Stream,
                (source, destination),
            )
            .build()
            .unwrap_or_default()
        } else {
            let family = if source.is_ipv4() { "TCP4" } else { "TCP6" };
            format!(
                "PROXY {family} {} {} {} {}\r\n",
                source.ip(),
                destination.ip(),
                source.port(),
                destination.port()
            )
            .into_bytes()
        }
    }

    proptest! {
        /// Whatever a peer sends first, the look ends in a verdict or a wait, never a panic, and
        /// a header found is no longer than what was seen.
        #[test]
        fn any_first_bytes_are_looked_at_without_panicking(
            seen in prop::collection::vec(any::<u8>(), 0..300),
            full in any::<bool>(),
        ) {
            if let Look::Header { len, .. } = examine(&seen, full) {
                prop_assert!(len <= seen.len());
            }
        }

        /// A v1 or v2 header names its client and its own length, whatever follows it; every
        /// part of it that has arrived so far is waited on, never refused.
        #[test]
        fn a_header_names_its_client_and_its_prefixes_are_waited_for(
            ip in ip(),
            port in any::<u16>(),
            v2 in any::<bool>(),
            rest in prop::collection::vec(any::<u8>(), 0..64),
        ) {
            let source = SocketAddr::new(ip, port);
            let head = header(source, v2);
            prop_assert!(!head.is_empty());
            let mut stream = head.clone();
            stream.extend_from_slice(&rest);
            prop_assert_eq!(
                examine(&stream, false),
                Look::Header { len: head.len(), client: Some(source) }
            );
            for cut in 1..head.len() {
                prop_assert_eq!(examine(&head[..cut], false), Look::Incomplete, "cut at {}", cut);
            }
        }
    }
}
