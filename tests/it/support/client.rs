//! One HTTP/1.1 or HTTP/2 client connection ([`HttpClient`]) and whole responses ([`Reply`]).

use bytes::Bytes;
use http::{header, Request, Response, StatusCode, Version};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};

use super::within;

pub type ClientBody = UnsyncBoxBody<Bytes, std::io::Error>;

enum Sender {
    H1(hyper::client::conn::http1::SendRequest<ClientBody>),
    H2(hyper::client::conn::http2::SendRequest<ClientBody>),
}

/// One client connection, HTTP/1.1 or HTTP/2.
pub struct HttpClient {
    sender: Sender,
    authority: String,
    scheme: &'static str,
}

/// A whole response.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub version: Version,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn backend(&self) -> &str {
        self.header("x-backend-id").unwrap_or("")
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    /// The `rtcgate=…` pair of this response's `Set-Cookie`, when it set the proxy's cookie.
    pub fn cookie(&self) -> Option<String> {
        let line = self.set_cookie_line();
        (!line.is_empty()).then(|| line.split(';').next().unwrap_or_default().to_string())
    }

    /// The whole `Set-Cookie` line of the proxy's cookie, or "".
    pub fn set_cookie_line(&self) -> String {
        self.headers
            .get_all("set-cookie")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find(|v| v.starts_with("rtcgate="))
            .unwrap_or_default()
            .to_string()
    }
}

impl HttpClient {
    pub async fn h1<I>(io: I, authority: String, scheme: &'static str) -> HttpClient
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (sender, conn) = within(
            "h1 handshake",
            hyper::client::conn::http1::handshake(TokioIo::new(io)),
        )
        .await
        .expect("h1 handshake");
        tokio::spawn(conn);
        HttpClient {
            sender: Sender::H1(sender),
            authority,
            scheme,
        }
    }

    pub async fn h2<I>(io: I, authority: String) -> HttpClient
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let builder = hyper::client::conn::http2::Builder::new(TokioExecutor::new());
        HttpClient::h2_with(io, authority, builder).await
    }

    /// An HTTP/2 client with `builder`'s settings (window sizes, say).
    pub async fn h2_with<I>(
        io: I,
        authority: String,
        builder: hyper::client::conn::http2::Builder<TokioExecutor>,
    ) -> HttpClient
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (sender, conn) = within("h2 handshake", builder.handshake(TokioIo::new(io)))
            .await
            .expect("h2 handshake");
        tokio::spawn(conn);
        HttpClient {
            sender: Sender::H2(sender),
            authority,
            scheme: "https",
        }
    }

    /// A request builder for `path` with the right target form for this protocol.
    pub fn request(&self, method: &str, path: &str) -> http::request::Builder {
        match self.sender {
            Sender::H1(_) => Request::builder()
                .method(method)
                .uri(path)
                .header(header::HOST, &self.authority),
            Sender::H2(_) => Request::builder()
                .method(method)
                .version(Version::HTTP_2)
                .uri(format!("{}://{}{path}", self.scheme, self.authority)),
        }
    }

    /// Sends `req` and returns the response head with its body still streaming.
    pub async fn send(
        &mut self,
        req: Request<ClientBody>,
    ) -> Result<Response<Incoming>, hyper::Error> {
        match &mut self.sender {
            Sender::H1(s) => {
                within("h1 ready", s.ready()).await?;
                within("h1 response", s.send_request(req)).await
            }
            Sender::H2(s) => {
                within("h2 ready", s.ready()).await?;
                within("h2 response", s.send_request(req)).await
            }
        }
    }

    /// Sends `req` and reads the whole response.
    pub async fn fetch(&mut self, req: Request<ClientBody>) -> Reply {
        let resp = self.send(req).await.expect("response");
        let (parts, body) = resp.into_parts();
        let body = within("response body", body.collect())
            .await
            .expect("body")
            .to_bytes();
        Reply {
            status: parts.status,
            version: parts.version,
            headers: parts.headers,
            body,
        }
    }

    /// GET `path`.
    pub async fn get(&mut self, path: &str) -> Reply {
        let req = self.request("GET", path).body(empty()).expect("request");
        self.fetch(req).await
    }

    /// GET `path`, with a `Cookie` header when one is given.
    pub async fn get_with_cookie(&mut self, path: &str, cookie: Option<&str>) -> Reply {
        let mut req = self.request("GET", path);
        if let Some(cookie) = cookie {
            req = req.header("cookie", cookie);
        }
        self.fetch(req.body(empty()).expect("request")).await
    }
}

pub fn empty() -> ClientBody {
    UnsyncBoxBody::new(Empty::new().map_err(|never| match never {}))
}

pub fn full(data: impl Into<Bytes>) -> ClientBody {
    UnsyncBoxBody::new(Full::new(data.into()).map_err(|never| match never {}))
}
