//! WebSocket clients: the handshake's answer ([`WsReply`]), echoes and closes.

use http::StatusCode;

use super::within;

pub type Ws<S> = tokio_tungstenite::WebSocketStream<S>;

/// The 101 (or refusal) a WebSocket handshake got, and the stream when it succeeded.
pub struct WsReply<S> {
    pub status: StatusCode,
    pub headers: http::HeaderMap,
    pub body: Option<Vec<u8>>,
    pub ws: Option<Ws<S>>,
}

impl<S> WsReply<S> {
    pub fn backend(&self) -> String {
        self.headers
            .get("x-backend-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    }

    pub fn set_cookie_pair(&self) -> Option<String> {
        self.headers
            .get_all("set-cookie")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find(|v| v.starts_with("rtcgate="))
            .map(|v| v.split(';').next().unwrap_or_default().to_string())
    }

    pub fn ws(&mut self) -> &mut Ws<S> {
        self.ws.as_mut().expect("the upgrade succeeded")
    }
}

/// `cookie` as the one header of a request, or none.
pub fn cookie_header(cookie: Option<&str>) -> Vec<(&'static str, &str)> {
    cookie.map(|c| ("cookie", c)).into_iter().collect()
}

pub async fn ws_handshake<S>(io: S, url: &str, headers: &[(&str, &str)]) -> WsReply<S>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = url.into_client_request().expect("ws request");
    for (name, value) in headers {
        let name = http::HeaderName::from_bytes(name.as_bytes()).expect("header name");
        req.headers_mut()
            .append(name, value.parse().expect("header value"));
    }
    match within("ws handshake", tokio_tungstenite::client_async(req, io)).await {
        Ok((ws, resp)) => WsReply {
            status: resp.status(),
            headers: resp.headers().clone(),
            body: None,
            ws: Some(ws),
        },
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => WsReply {
            status: resp.status(),
            headers: resp.headers().clone(),
            body: resp.body().clone(),
            ws: None,
        },
        Err(e) => panic!("ws handshake failed: {e}"),
    }
}

/// Sends `text` and expects it echoed back.
pub async fn echo<S>(ws: &mut Ws<S>, text: &str)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    within("ws send", ws.send(Message::text(text)))
        .await
        .expect("send");
    loop {
        match within("ws echo", ws.next()).await {
            Some(Ok(Message::Text(t))) => {
                assert_eq!(t.as_str(), text);
                return;
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            other => panic!("expected the echo of {text:?}, got {other:?}"),
        }
    }
}

/// Waits for the stream to end (close frame, EOF or reset).
pub async fn closed<S>(ws: &mut Ws<S>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use futures_util::StreamExt;
    loop {
        match within("ws close", ws.next()).await {
            None | Some(Err(_)) => return,
            Some(Ok(m)) if m.is_close() => return,
            Some(Ok(_)) => continue,
        }
    }
}
