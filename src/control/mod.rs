//! The control plane: what changes the running proxy, apart from the requests it serves.
//!
//! | file | owns |
//! |---|---|
//! | [`runtime`] | [`runtime::Runtime`]: the first snapshot, admin states and drains, starting and stopping the rest |
//! | [`reload`] | reloading the config, and its triggers: file watch, SIGHUP, the drain ticker |
//! | [`health`] | active health checks, one task per backend |
//! | [`turn_health`] | TURN servers' checks: STUN Binding (or TCP connect), one task per URL |
//! | [`membership`] | backends added and removed through the admin API, merged with the file's; the state file |
//! | [`dns`] | backends named by DNS: one per address, looked up every interval, vanished ones drained out |
//! | [`scale`] | scale hooks: the up hook when headroom runs low, idle backends drained out |
//! | [`admin`] | the admin listener: metrics, status, the page, admin states, reload |

pub mod admin;
pub mod dns;
pub mod health;
pub mod membership;
pub mod reload;
pub mod runtime;
pub mod scale;
pub mod turn_health;
