//! rtcgate: a Layer-7 sticky reverse proxy for pools of WebRTC media and signalling servers.
//!
//! The map, in the order a request meets it:
//!
//! | module | owns |
//! |---|---|
//! | [`config`] | `proxy.toml` → validated, typed [`config::Config`]; errors name the key |
//! | [`tls`] | certificates → `rustls::ServerConfig` (ALPN, SNI) |
//! | [`server`] | accept loops, per-connection tasks, client-side limits, graceful shutdown |
//! | [`proxy`] | one request: route → place → forward → respond; header hygiene; error mapping |
//! | [`tunnel`] | WebSocket upgrades (HTTP/1.1 Upgrade, HTTP/2 extended CONNECT) and the byte pump |
//! | [`upstream`] | keep-alive HTTP/1.1 connections to backends, one pool per worker |
//! | [`balance`] | placement over a snapshot's pool; no I/O |
//! | [`snapshot`] | the immutable config-derived view swapped whole by `arc_swap` |
//! | [`sticky`] | the signed session cookie: sign, verify, rotate, strip, Set-Cookie |
//! | [`reload`] | reload triggers (file watch, SIGHUP) and the drain ticker for removed backends |
//! | [`metrics`] | the owned Prometheus registry, every metric name and handle |
//! | [`pool`] | backend runtime state and the registry that outlives snapshots |
//! | [`admin`] | the admin listener: metrics, status JSON and page, drain/maint/enable, reload |
//! | [`health`] | active health checks and rise/fall; passive failures feed the same counters |
//! | [`demo`] | built-in demo backends for `rtcgate demo` and the tests |
//!
//! `main.rs` is the thin binary: CLI, logging, exit codes.

#![forbid(unsafe_code)]

pub mod admin;
pub mod balance;
pub mod config;
pub mod demo;
pub mod health;
pub mod metrics;
pub mod pool;
pub mod proxy;
pub mod reload;
pub mod server;
pub mod snapshot;
pub mod sticky;
pub mod tls;
pub mod tunnel;
pub mod upstream;
