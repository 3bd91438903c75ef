//! The listening sockets: binding the configured addresses (after validation, refusing an
//! address another process holds), and the socket of each worker (`SO_REUSEPORT`, so the kernel
//! spreads new connections over the workers).

use std::io;
use std::net::SocketAddr;

use anyhow::Context as _;
use tokio::net::TcpListener;

use crate::config::Listen;

/// The bound listening sockets. Tests bind `127.0.0.1:0` themselves and pass them in.
#[derive(Debug, Default)]
pub struct Listeners {
    pub https: Option<TcpListener>,
    pub http: Option<TcpListener>,
    pub admin: Option<TcpListener>,
}

impl Listeners {
    /// Binds every address in `listen`; an error names the key and the address.
    pub async fn bind(listen: &Listen) -> anyhow::Result<Listeners> {
        async fn one(key: &str, addr: Option<SocketAddr>) -> anyhow::Result<Option<TcpListener>> {
            match addr {
                None => Ok(None),
                Some(a) => check_free(a)
                    .and_then(|()| listen_socket(a, key != "admin", None))
                    .and_then(TcpListener::from_std)
                    .map(Some)
                    .with_context(|| format!("listen.{key}: cannot listen on {a}")),
            }
        }
        Ok(Listeners {
            https: one("https", listen.https).await?,
            http: one("http", listen.http).await?,
            admin: one("admin", listen.admin).await?,
        })
    }

    /// The listeners that carry traffic (for the workers), and the admin listener (for the
    /// control plane).
    pub fn split(self) -> (Traffic, Option<TcpListener>) {
        let traffic = Traffic {
            https: self.https,
            http: self.http,
        };
        (traffic, self.admin)
    }
}

/// The listeners that carry client traffic.
#[derive(Debug, Default)]
pub struct Traffic {
    pub https: Option<TcpListener>,
    pub http: Option<TcpListener>,
}

/// A listening socket on `addr` as `TcpListener::bind` makes one (SO_REUSEADDR, a backlog of
/// 1024), with SO_REUSEPORT if `reuse_port`, and IPV6_V6ONLY as `only_v6` says (`None`: the
/// system's default).
fn listen_socket(
    addr: SocketAddr,
    reuse_port: bool,
    only_v6: Option<bool>,
) -> io::Result<std::net::TcpListener> {
    let socket = unbound_socket(addr, only_v6)?;
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

fn unbound_socket(addr: SocketAddr, only_v6: Option<bool>) -> io::Result<socket2::Socket> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    if let (true, Some(only)) = (addr.is_ipv6(), only_v6) {
        socket.set_only_v6(only)?;
    }
    Ok(socket)
}

/// Fails with "address in use" where a listener already holds `addr`, as a bind without
/// SO_REUSEPORT does. With SO_REUSEPORT, the bind would succeed beside another process of the
/// same user (a second rtcgate started by mistake) and split the connections with it.
fn check_free(addr: SocketAddr) -> io::Result<()> {
    if addr.port() != 0 {
        unbound_socket(addr, None)?.bind(&addr.into())?;
    }
    Ok(())
}

/// Worker `w`'s socket for `listener`. When the listener has SO_REUSEPORT (as `Listeners::bind`
/// makes them), each worker after the first gets a socket of its own on the same address: the
/// kernel then hands each new connection to one worker's socket and wakes that worker alone.
/// Otherwise (a socket bound by the caller), the workers share copies of one socket.
pub(super) fn worker_socket(
    listener: &std::net::TcpListener,
    w: usize,
) -> io::Result<std::net::TcpListener> {
    let reuse_port = socket2::SockRef::from(listener)
        .reuse_port()
        .unwrap_or(false);
    if w == 0 || !reuse_port {
        return listener.try_clone();
    }
    let addr = listener.local_addr()?;
    let only_v6 = match addr {
        SocketAddr::V6(_) => socket2::SockRef::from(listener).only_v6().ok(),
        SocketAddr::V4(_) => None,
    };
    listen_socket(addr, true, only_v6).or_else(|e| {
        tracing::warn!(%addr, error = %e, "cannot open a worker's own listening socket; the workers share one");
        listener.try_clone()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Each worker past the first listens on a socket of its own, and the kernel spreads new
    /// connections over the workers' sockets (copies of one socket would share one queue, and
    /// the first to drain it would take them all).
    #[test]
    fn each_worker_gets_its_own_share_of_new_connections() {
        let first =
            listen_socket("127.0.0.1:0".parse().expect("address"), true, None).expect("bind");
        let second = worker_socket(&first, 1).expect("worker socket");
        let addr = first.local_addr().expect("address");
        assert_eq!(second.local_addr().expect("address"), addr);
        let clients: Vec<_> = (0..32)
            .map(|_| std::net::TcpStream::connect(addr).expect("connect"))
            .collect();
        let drain = |l: &std::net::TcpListener| {
            let mut n = 0;
            while let Ok(_conn) = l.accept() {
                n += 1;
            }
            n
        };
        let mut counts = [0, 0];
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        for _ in 0..100_000 {
            counts[0] += drain(&first);
            counts[1] += drain(&second);
            if counts[0] + counts[1] == clients.len() || std::time::Instant::now() > deadline {
                break;
            }
            std::thread::yield_now();
        }
        assert_eq!(counts[0] + counts[1], clients.len(), "accepted {counts:?}");
        // All 32 on one socket has odds of 2 in 2^32.
        assert!(counts[0] > 0 && counts[1] > 0, "accepted {counts:?}");
    }

    /// SO_REUSEPORT does not let a second instance bind beside a running one: its bind fails
    /// with "address in use", naming the key, as it did before.
    #[tokio::test]
    async fn a_second_instance_on_the_same_address_is_refused() {
        let mut listen = Listen {
            https: None,
            http: Some("127.0.0.1:0".parse().expect("address")),
            admin: None,
            proxy_protocol: Default::default(),
            trusted_forwarders: Vec::new(),
        };
        let first = Listeners::bind(&listen).await.expect("first bind");
        let bound = first
            .http
            .as_ref()
            .expect("http")
            .local_addr()
            .expect("address");
        listen.http = Some(bound);
        let err = Listeners::bind(&listen).await.expect_err("second bind");
        let text = format!("{err:#}");
        assert!(text.contains("listen.http: cannot listen on"), "{text}");
        assert!(text.to_lowercase().contains("in use"), "{text}");
        drop(first);
        Listeners::bind(&listen)
            .await
            .expect("bind once the first is gone");
    }

    /// A socket bound by the caller without SO_REUSEPORT is shared: workers get copies of it.
    #[test]
    fn a_socket_without_reuse_port_is_shared() {
        let first =
            listen_socket("127.0.0.1:0".parse().expect("address"), false, None).expect("bind");
        let second = worker_socket(&first, 1).expect("worker socket");
        let client = std::net::TcpStream::connect(first.local_addr().expect("address"));
        client.expect("connect");
        second.set_nonblocking(false).expect("blocking");
        let timeout = Some(Duration::from_secs(5));
        socket2::SockRef::from(&second)
            .set_read_timeout(timeout)
            .expect("accept timeout");
        // The connection queued on the one socket is accepted through the copy.
        second.accept().expect("accept through the copy");
    }
}
