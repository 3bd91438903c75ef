//! The demo is a call: two browsers (headless Chromium with a fake camera and microphone) open
//! the demo page through rtcgate with one room, meet on one backend, which relays their
//! signalling, and each sees the other's video, sent browser to browser.

use crate::support::*;

#[tokio::test]
async fn two_browsers_in_one_room_call_each_other_through_rtcgate() {
    let _solo = solo().await;
    let backends = spawn_backends(3).await;
    let toml = config_with_pool(&backends, "", "room_param = \"room\"");
    let proxy = spawn_proxy(&toml).await;
    let room = "standup";
    let url = format!(
        "https://localhost:{}/?room={room}&join=1&loopback=1",
        proxy.https.port()
    );
    let media = [
        "--use-fake-device-for-media-stream",
        "--use-fake-ui-for-media-stream",
        "--allow-loopback-in-peer-connection",
        "--autoplay-policy=no-user-gesture-required",
        "--ignore-certificate-errors",
    ];
    let mut browsers = Vec::new();
    let mut profiles = Vec::new();
    for _ in 0..2 {
        let profile = tempfile::tempdir().expect("profile");
        let mut args = media.to_vec();
        args.push(&url);
        let Some(browser) = chromium(profile.path(), &args) else {
            return;
        };
        browsers.push(browser);
        profiles.push(profile);
    }
    let reports = |b: &rtcgate::demo::DemoBackend| {
        b.calls()
            .media_reports()
            .borrow()
            .get(room)
            .copied()
            .unwrap_or(0)
    };
    let deadline = tokio::time::Instant::now() + BROWSER_START;
    loop {
        // Each page reports once it shows the other's video: two reports, on one backend.
        if backends.iter().any(|b| reports(b) >= 2) {
            break;
        }
        for b in &mut browsers {
            if let Some(status) = b.exited() {
                panic!("chromium exited ({status}) before the call connected");
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no call within {BROWSER_START:?}: reports {:?}",
            backends.iter().map(|b| reports(b)).collect::<Vec<_>>()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}
