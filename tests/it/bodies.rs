//! Large bodies pass up and down intact, and streamed: a byte reaches the other side before the
//! last one has been sent.

use crate::support::*;
use bytes::Bytes;
use http::StatusCode;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use rtcgate::demo::{pattern, Fnv};
use tokio::sync::mpsc;

const FIFTY_MB: u64 = 50 * 1000 * 1000;
const CHUNK: u64 = 64 * 1024;

/// A request body fed chunk by chunk from a channel.
fn channel_body() -> (mpsc::Sender<Bytes>, ClientBody) {
    let (tx, rx) = mpsc::channel::<Bytes>(4);
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, std::io::Error>(Frame::data(b)), rx))
    });
    (tx, UnsyncBoxBody::new(StreamBody::new(stream)))
}

fn chunk_at(offset: u64, len: u64) -> Bytes {
    Bytes::from((offset..offset + len).map(pattern).collect::<Vec<u8>>())
}

async fn upload_50mb(mut c: HttpClient, backend: &rtcgate::demo::DemoBackend) {
    let (tx, body) = channel_body();
    let req = c
        .request("POST", "/sink")
        .header("content-length", FIFTY_MB.to_string())
        .body(body)
        .expect("request");
    let mut received = backend.received();
    let start = *received.borrow();
    let sending = tokio::spawn(async move { c.fetch(req).await });
    // Streamed: the backend sees the first chunk while the client still holds the rest.
    tx.send(chunk_at(0, CHUNK)).await.expect("send first chunk");
    within(
        "first chunk reaches the backend",
        received.wait_for(|n| *n >= start + CHUNK),
    )
    .await
    .expect("watch");
    let mut hash = Fnv::default();
    hash.update(&chunk_at(0, CHUNK));
    let mut off = CHUNK;
    while off < FIFTY_MB {
        let len = CHUNK.min(FIFTY_MB - off);
        let chunk = chunk_at(off, len);
        hash.update(&chunk);
        within("send chunk", tx.send(chunk)).await.expect("send");
        off += len;
    }
    drop(tx);
    let r = within("upload reply", sending).await.expect("task");
    assert_eq!(r.status, StatusCode::OK);
    let v = r.json();
    assert_eq!(v["bytes"], FIFTY_MB);
    assert_eq!(v["fnv"], format!("{:016x}", hash.0));
}

async fn download_50mb(mut c: HttpClient, backend: &rtcgate::demo::DemoBackend) {
    let req = c
        .request("GET", &format!("/bytes?n={FIFTY_MB}&hold=1"))
        .body(empty())
        .expect("request");
    let resp = c.send(req).await.expect("response");
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();
    let mut got = 0u64;
    let mut expect = Fnv::default();
    let mut hash = Fnv::default();
    let mut released = false;
    while let Some(frame) = within("next chunk", body.frame()).await {
        let frame = frame.expect("frame");
        let Some(data) = frame.data_ref() else {
            continue;
        };
        expect.update(&chunk_at(got, data.len() as u64));
        hash.update(data);
        got += data.len() as u64;
        // The backend holds everything after its first 64 KiB until told to go on: receiving
        // bytes before that proves the proxy does not wait for the whole body.
        if !released && got > 0 {
            backend.release();
            released = true;
        }
    }
    assert_eq!(got, FIFTY_MB);
    assert_eq!(hash.0, expect.0, "the body arrived altered");
}

#[tokio::test]
async fn fifty_mb_uploads_stream_intact_over_h1_and_h2() {
    let _solo = solo().await;
    let backends = spawn_backends(1).await;
    let proxy = spawn_proxy(&config_for(&backends, "")).await;
    upload_50mb(proxy.h1().await, &backends[0]).await;
    upload_50mb(proxy.h2().await, &backends[0]).await;
}

#[tokio::test]
async fn fifty_mb_downloads_stream_intact_over_h1_and_h2() {
    let _solo = solo().await;
    let backends = spawn_backends(1).await;
    let proxy = spawn_proxy(&config_for(&backends, "")).await;
    download_50mb(proxy.h1().await, &backends[0]).await;
    download_50mb(proxy.h2().await, &backends[0]).await;
}
