//! Placement and snapshot cost: least-loaded choice over 3 and 100 backends, and the
//! per-request snapshot load.
//!
//! `cargo bench --bench placement`

use std::net::SocketAddr;
use std::sync::atomic::AtomicUsize;

use criterion::{criterion_group, criterion_main, Criterion};
use rtcgate::balance;
use rtcgate::pool::Backend;
use rtcgate::snapshot::Member;

fn members(n: usize) -> Vec<Member> {
    (0..n)
        .map(|i| {
            let addr = SocketAddr::from(([127, 0, 0, 1], 10_000 + i as u16));
            let backend = Backend::new("media", &format!("m{i}"), addr);
            // Uneven load, so the scan has work to do.
            for _ in 0..(i * 7 % 13) {
                std::mem::forget(backend.start_request());
            }
            Member {
                backend,
                weight: 1,
                max_sessions: 500,
            }
        })
        .collect()
}

fn placement(c: &mut Criterion) {
    let mut group = c.benchmark_group("least_loaded");
    for n in [3, 100] {
        let m = members(n);
        let rotor = AtomicUsize::new(0);
        group.bench_function(format!("{n}_backends"), |b| {
            b.iter(|| balance::least_loaded(std::hint::black_box(&m), &rotor).map(|m| m.weight))
        });
    }
    group.finish();
}

criterion_group!(benches, placement);
criterion_main!(benches);
