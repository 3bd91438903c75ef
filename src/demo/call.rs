//! The call demo's signalling: the demo backend as a room's signalling server. Each WebSocket
//! on `/signal?room=R` is a participant of room R on this backend; it is welcomed with its id
//! and the ids of those already there, and its messages (offers, answers, ICE candidates) are
//! relayed to the participant they name. Media never passes here: it goes peer to peer.
//!
//! Rooms live on one backend only, so two participants meet only when rtcgate sent both to
//! the same backend: the call connecting is room affinity made visible. Pages report when
//! they see and hear another participant ([`Calls::media_reports`]), which the browser test
//! waits for. Each participant's outbox is bounded; a participant that stops reading loses
//! messages rather than growing this backend's memory.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;

/// Messages queued for one participant before more are dropped.
const OUTBOX: usize = 256;

/// A room's participants: id → their outbox.
type Room = HashMap<u64, mpsc::Sender<String>>;

/// The rooms of one demo backend.
#[derive(Debug)]
pub struct Calls {
    rooms: Mutex<HashMap<String, Room>>,
    next_id: AtomicU64,
    /// "I see and hear another participant" reports, by room.
    reports: watch::Sender<HashMap<String, u64>>,
}

impl Default for Calls {
    fn default() -> Self {
        Calls {
            rooms: Mutex::default(),
            next_id: AtomicU64::new(1),
            reports: watch::channel(HashMap::new()).0,
        }
    }
}

impl Calls {
    /// Watches how many media reports each room's pages have sent.
    pub fn media_reports(&self) -> watch::Receiver<HashMap<String, u64>> {
        self.reports.subscribe()
    }

    /// Serves one participant of `room`, welcomed by `backend`, until it leaves or `stop`.
    pub async fn serve<S>(
        &self,
        room: String,
        backend: &str,
        mut ws: WebSocketStream<S>,
        stop: CancellationToken,
    ) where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, mut outbox) = mpsc::channel::<String>(OUTBOX);
        let peers: Vec<u64> = {
            let mut rooms = self.rooms.lock().unwrap_or_else(|e| e.into_inner());
            let members = rooms.entry(room.clone()).or_default();
            let peers = members.keys().copied().collect();
            members.insert(id, tx);
            peers
        };
        let welcome = json!({ "type": "welcome", "id": id, "backend": backend, "room": room, "peers": peers });
        if ws.send(Message::text(welcome.to_string())).await.is_ok() {
            self.broadcast(&room, id, &json!({ "type": "joined", "id": id }));
            loop {
                tokio::select! {
                    out = outbox.recv() => match out {
                        Some(text) => if ws.send(Message::text(text)).await.is_err() { break },
                        None => break,
                    },
                    msg = ws.next() => match msg {
                        Some(Ok(Message::Text(text))) => self.relay(&room, id, text.as_str()),
                        Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
                        Some(Ok(_)) => {}
                    },
                    _ = stop.cancelled() => break,
                }
            }
        }
        {
            let mut rooms = self.rooms.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(members) = rooms.get_mut(&room) {
                members.remove(&id);
                if members.is_empty() {
                    rooms.remove(&room);
                }
            }
        }
        self.broadcast(&room, id, &json!({ "type": "left", "id": id }));
    }

    /// Handles one message from participant `from`: a report is counted, anything naming a
    /// participant (`to`) is passed to it with `from` set; the rest is dropped.
    fn relay(&self, room: &str, from: u64, text: &str) {
        let Ok(mut msg) = serde_json::from_str::<Value>(text) else {
            return;
        };
        if msg["type"] == "report" && msg["state"] == "media" {
            self.reports
                .send_modify(|r| *r.entry(room.to_string()).or_default() += 1);
            return;
        }
        let Some(to) = msg["to"].as_u64() else {
            return;
        };
        msg["from"] = json!(from);
        let rooms = self.rooms.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(peer) = rooms.get(room).and_then(|m| m.get(&to)) {
            let _ = peer.try_send(msg.to_string());
        }
    }

    /// Sends `msg` to everyone in `room` but `from`.
    fn broadcast(&self, room: &str, from: u64, msg: &Value) {
        let text = msg.to_string();
        let rooms = self.rooms.lock().unwrap_or_else(|e| e.into_inner());
        for (_, peer) in rooms
            .get(room)
            .into_iter()
            .flatten()
            .filter(|(id, _)| **id != from)
        {
            let _ = peer.try_send(text.clone());
        }
    }
}
