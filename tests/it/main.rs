//! rtcgate's integration tests, one binary (as ripgrep keeps them): real sockets on loopback,
//! demo backends, the proxy started in-process from `support.rs` (or as the binary, in
//! `binary.rs`). One file per feature.

mod support;

mod abuse;
mod admin;
mod binary;
mod bodies;
mod call;
mod capacity;
mod cli;
mod config;
mod dashboards;
mod discovery;
mod dns;
mod fleet;
mod front_door;
mod health;
mod janus;
mod layers;
mod machine;
mod membership;
mod properties;
mod proxy_protocol;
mod reload;
mod scale;
mod sticky;
mod systemd;
mod tls_resumption;
mod turn;
mod turn_credentials;
mod websocket;
