//! What parts of the configuration compile into for serving: the TLS server config
//! ([`tls`]) with its session tickets ([`tickets`]), and the HTTP server builders ([`http`]). Both are built once per snapshot, so a
//! reload applies them to new connections while open ones keep theirs. [`x509`] reads a
//! certificate file's names and expiry for a person (`rtcgate check`).

pub mod http;
pub mod tickets;
pub mod tls;
pub mod x509;
