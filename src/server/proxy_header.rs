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
        let seen = &buf[..n];
        let parsed = HeaderResult::parse(seen);
        if parsed.is_incomplete() {
            // A v1 line that has ended (or has passed its 107 bytes) and does not parse is
            // not going to: only a header still arriving is waited for.
            let v1_ended = seen.starts_with(b"PROXY ") && (seen.contains(&b'\n') || n >= V1_MAX);
            if v1_ended {
                return Err("not a PROXY header: a malformed v1 line".into());
            }
            if n == buf.len() {
                return Err(format!("a PROXY header longer than {MAX_HEADER} bytes"));
            }
            tokio::time::sleep(PARTIAL_WAIT).await;
            continue;
        }
        let (len, client) = match parsed {
            HeaderResult::V1(Ok(h)) => (h.header.len(), v1_client(&h.addresses)),
            HeaderResult::V2(Ok(h)) => (h.len(), v2_client(&h.addresses)),
            HeaderResult::V1(Err(e)) => return Err(format!("not a PROXY header: {e}")),
            HeaderResult::V2(Err(e)) => return Err(format!("not a PROXY header: {e}")),
        };
        stream
            .read_exact(&mut buf[..len])
            .await
            .map_err(|e| e.to_string())?;
        return Ok(client.unwrap_or(peer));
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
