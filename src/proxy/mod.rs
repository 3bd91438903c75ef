//! The data path for one request: from a client's request to its response, and the tunnel a
//! WebSocket upgrade becomes.
//!
//! | file | owns |
//! |---|---|
//! | [`handler`] | the request path: route → place → forward → respond; its one entry is [`handler::Handler::handle`] |
//! | [`discovery`] | the connection-string endpoint: place, reserve, hand out a URL with a pin token |
//! | [`turn`] | TURN REST credentials for trusted users, listing the TURN servers that are up |
//! | [`conn`] | what a client connection carries for its requests: peer, forwarding parts, in-progress counters |
//! | [`headers`] | header hygiene: hop-by-hop, forwarding headers, host and room; the backend's request |
//! | [`error`] | what the client sees when rtcgate answers: 400 / 404 / 502 / 503 / 504 |
//! | [`body`] | a proxied response body and what it holds until it ends |
//! | [`upstream`] | keep-alive HTTP/1.1 connections to backends, one pool per worker |
//! | [`tunnel`] | WebSocket upgrades (HTTP/1.1 Upgrade, HTTP/2 extended CONNECT) |
//! | [`pump`] | a tunnel's bytes both ways, and its end with a close frame |
//! | [`frames`] | where the backend's stream stands among WebSocket frames |
//!
//! Sockets, TLS and client-side limits are `server`'s; which backend takes a request is
//! `balance`'s.

pub mod access;
pub mod body;
pub mod conn;
pub mod discovery;
pub mod error;
pub mod frames;
pub mod handler;
pub mod headers;
pub mod pump;
pub mod tunnel;
pub mod turn;
pub mod upstream;
