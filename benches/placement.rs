//! The per-request decision without I/O: cookie sign and verify, placement of new, pinned and
//! room users over 3 and 100 backends, and the snapshot load every request starts with.
//!
//! `cargo bench --bench placement`

use std::hint::black_box;
use std::path::Path;

use arc_swap::ArcSwap;
use criterion::{criterion_group, criterion_main, Criterion};
use http::header::{HeaderMap, HeaderValue, COOKIE};
use rtcgate::balance;
use rtcgate::config::{Config, WhenDown};
use rtcgate::state::registry::Registry;
use rtcgate::state::snapshot::Snapshot;
use rtcgate::sticky::CookiePin;

fn snapshot(n: usize) -> Snapshot {
    let mut text = String::from(
        "[listen]\nhttp = \"127.0.0.1:0\"\n[sticky]\nkeys = [\"k1:bench-secret-0123456789abcdef0123456789\"]\n\
         [pools.media]\nhosts = [\"*\"]\nroom_param = \"room\"\n",
    );
    for i in 0..n {
        text.push_str(&format!(
            "[[pools.media.backends]]\nid = \"media-{i}\"\naddress = \"127.0.0.1:{}\"\n",
            10_000 + i
        ));
    }
    let config = Config::parse(&text, Path::new("bench.toml")).expect("config");
    let snap = Snapshot::build(config, &Registry::default()).expect("snapshot");
    // Uneven load, so the scans have work to do.
    for (i, m) in snap.pools[0].members.iter().enumerate() {
        for _ in 0..(i * 7 % 13) {
            std::mem::forget(m.backend.start_request());
        }
    }
    snap
}

fn cookie(c: &mut Criterion) {
    let snap = snapshot(3);
    let sticky = &snap.sticky;
    let token = sticky.sign("media", "media-1", 1_000);
    let mut g = c.benchmark_group("cookie");
    g.bench_function("sign", |b| {
        b.iter(|| sticky.sign("media", black_box("media-1"), 1_000))
    });
    g.bench_function("verify", |b| {
        b.iter(|| sticky.verify("media", black_box(&token), 1_000))
    });
    g.finish();
}

fn placement(c: &mut Criterion) {
    let mut g = c.benchmark_group("place");
    for n in [3, 100] {
        let snap = snapshot(n);
        let pool = &snap.pools[0];
        let mut headers = HeaderMap::new();
        let token = snap.sticky.sign("media", "media-2", 1_000);
        let value = format!("theme=dark; rtcgate={token}; lang=en");
        headers.insert(COOKIE, HeaderValue::from_str(&value).expect("header"));
        g.bench_function(format!("new_user/{n}"), |b| {
            b.iter(|| {
                balance::place(pool, CookiePin::None, None, WhenDown::Repin)
                    .map(|p| p.member.weight)
            })
        });
        g.bench_function(format!("verify_and_place_pinned/{n}"), |b| {
            b.iter(|| {
                let cached = |id: &str| pool.member(id).and_then(|m| m.pin_cache.as_ref());
                let pin = snap.sticky.pin(black_box(&headers), "media", 1_000, cached);
                balance::place(pool, pin, None, WhenDown::Repin).map(|p| p.member.weight)
            })
        });
        g.bench_function(format!("room/{n}"), |b| {
            b.iter(|| {
                balance::place(
                    pool,
                    CookiePin::None,
                    Some(balance::Room {
                        name: black_box("daily-standup"),
                        live_on: None,
                    }),
                    WhenDown::Repin,
                )
                .map(|p| p.member.weight)
            })
        });
    }
    g.finish();
}

fn snapshot_load(c: &mut Criterion) {
    let swap = ArcSwap::from_pointee(snapshot(3));
    c.bench_function("snapshot_load", |b| b.iter(|| swap.load().pools.len()));
}

criterion_group!(benches, cookie, placement, snapshot_load);
criterion_main!(benches);
