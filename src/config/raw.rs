//! `proxy.toml` as written: serde structs that reject unknown keys, and the defaults of keys
//! left out. Nothing here judges a value; `validate.rs` turns these into the typed [`Config`].
//!
//! [`Config`]: super::Config

use std::collections::BTreeMap;

use serde::Deserialize;

use super::types::{
    DiscoveryMode, LogFormat, OnDown, PinWorkers, SameSite, Secure, TurnAuth, WhenDown,
};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub(super) listen: RawListen,
    pub(super) tls: Option<RawTls>,
    pub(super) sticky: RawSticky,
    #[serde(default)]
    pub(super) admin: RawAdmin,
    #[serde(default)]
    pub(super) limits: RawLimits,
    #[serde(default)]
    pub(super) log: RawLog,
    #[serde(default)]
    pub(super) discovery: RawDiscovery,
    #[serde(default)]
    pub(super) turn: RawTurn,
    #[serde(default)]
    pub(super) dns: RawDns,
    #[serde(default)]
    pub(super) pools: BTreeMap<String, RawPool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawListen {
    pub(super) https: Option<String>,
    pub(super) http: Option<String>,
    pub(super) admin: Option<String>,
    #[serde(default)]
    pub(super) proxy_protocol: Vec<String>,
    #[serde(default)]
    pub(super) trusted_forwarders: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTls {
    #[serde(default)]
    pub(super) ticket_keys: String,
    pub(super) cert: String,
    pub(super) key: String,
    #[serde(default)]
    pub(super) sni: Vec<RawSni>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSni {
    pub(super) names: Vec<String>,
    pub(super) cert: String,
    pub(super) key: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSticky {
    #[serde(default = "default_cookie")]
    pub(super) cookie: String,
    pub(super) keys: Vec<String>,
    #[serde(default = "zero_duration")]
    pub(super) max_age: String,
    #[serde(default = "default_same_site")]
    pub(super) same_site: SameSite,
    #[serde(default = "default_secure")]
    pub(super) secure: Secure,
    #[serde(default = "default_when_down")]
    pub(super) when_down: WhenDown,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAdmin {
    #[serde(default)]
    pub(super) token: String,
    #[serde(default)]
    pub(super) token_for_reads: bool,
    #[serde(default)]
    pub(super) hosts: Vec<String>,
    #[serde(default)]
    pub(super) state_file: String,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLimits {
    pub(super) workers: Option<usize>,
    pub(super) pin_workers: Option<PinWorkers>,
    pub(super) max_connections: Option<usize>,
    pub(super) tls_handshake_timeout: Option<String>,
    pub(super) header_read_timeout: Option<String>,
    pub(super) max_header_size: Option<usize>,
    pub(super) idle_timeout: Option<String>,
    pub(super) connect_timeout: Option<String>,
    pub(super) response_timeout: Option<String>,
    pub(super) shutdown_grace: Option<String>,
    pub(super) shutdown_delay: Option<String>,
    pub(super) tunnel_idle_timeout: Option<String>,
    pub(super) upstream_idle_per_backend: Option<usize>,
    pub(super) upstream_idle_timeout: Option<String>,
    pub(super) h2_control_frames_per_second: Option<u32>,
    pub(super) buffer_budget: Option<u64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLog {
    #[serde(default)]
    pub(super) access: bool,
    #[serde(default)]
    pub(super) format: LogFormat,
}

/// Keys left out take [`Default`]'s values.
#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct RawDiscovery {
    pub(super) path: String,
    pub(super) mode: DiscoveryMode,
    pub(super) ws_path: String,
    pub(super) public_host: String,
    pub(super) reservation: String,
    pub(super) token_ttl: String,
    pub(super) token_param: String,
    pub(super) cors_origins: Vec<String>,
}

#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct RawDns {
    pub(super) nameservers: Vec<String>,
    pub(super) interval: String,
    pub(super) timeout: String,
}

impl Default for RawDns {
    fn default() -> Self {
        RawDns {
            nameservers: Vec::new(),
            interval: "10s".into(),
            timeout: "2s".into(),
        }
    }
}

impl Default for RawDiscovery {
    fn default() -> Self {
        RawDiscovery {
            path: String::new(),
            mode: default_discovery_mode(),
            ws_path: default_ws_path(),
            public_host: String::new(),
            reservation: default_reservation(),
            token_ttl: default_token_ttl(),
            token_param: default_token_param(),
            cors_origins: Vec::new(),
        }
    }
}

/// Keys left out take [`Default`]'s values.
#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct RawTurn {
    pub(super) path: String,
    pub(super) secret: String,
    pub(super) urls: Vec<String>,
    pub(super) ttl: String,
    pub(super) auth: TurnAuth,
    pub(super) auth_url: String,
    pub(super) auth_user_header: String,
    pub(super) auth_cache: String,
    pub(super) auth_timeout: String,
    pub(super) health: RawTurnHealth,
}

impl Default for RawTurn {
    fn default() -> Self {
        RawTurn {
            path: String::new(),
            secret: String::new(),
            urls: Vec::new(),
            ttl: default_turn_ttl(),
            auth: default_turn_auth(),
            auth_url: String::new(),
            auth_user_header: default_auth_user_header(),
            auth_cache: default_auth_cache(),
            auth_timeout: default_auth_timeout(),
            health: RawTurnHealth::default(),
        }
    }
}

/// Keys left out take [`Default`]'s values.
#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct RawTurnHealth {
    pub(super) interval: String,
    pub(super) timeout: String,
    pub(super) rise: u32,
    pub(super) fall: u32,
}

impl Default for RawTurnHealth {
    fn default() -> Self {
        RawTurnHealth {
            interval: default_turn_interval(),
            timeout: default_health_timeout(),
            rise: default_rise_fall(),
            fall: default_rise_fall(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPool {
    #[serde(default = "default_hosts")]
    pub(super) hosts: Vec<String>,
    #[serde(default)]
    pub(super) room_param: String,
    #[serde(default = "default_machine_param")]
    pub(super) machine_param: String,
    #[serde(default = "default_room_balance_factor")]
    pub(super) room_balance_factor: f64,
    #[serde(default = "default_max_sessions")]
    pub(super) max_sessions: u32,
    #[serde(default = "default_hard_cap")]
    pub(super) hard_cap: f64,
    #[serde(default)]
    pub(super) max_rooms: u32,
    #[serde(default = "default_drain_timeout")]
    pub(super) drain_timeout: String,
    #[serde(default)]
    pub(super) health: RawHealth,
    #[serde(default = "default_on_down")]
    pub(super) on_down: OnDown,
    #[serde(default = "zero_duration")]
    pub(super) slow_start: String,
    #[serde(default)]
    pub(super) backends: Vec<RawBackend>,
    #[serde(default)]
    pub(super) scale: Option<RawScale>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawScale {
    #[serde(default)]
    pub(super) min_headroom: f64,
    #[serde(default = "default_sustain")]
    pub(super) sustain: String,
    #[serde(default)]
    pub(super) up_command: Vec<String>,
    #[serde(default = "default_cooldown")]
    pub(super) cooldown: String,
    #[serde(default = "default_hook_timeout")]
    pub(super) timeout: String,
    #[serde(default)]
    pub(super) down_command: Vec<String>,
    #[serde(default = "zero_duration")]
    pub(super) idle_after: String,
    #[serde(default = "default_min_backends")]
    pub(super) min_backends: usize,
}

/// Keys left out take [`Default`]'s values.
#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct RawHealth {
    pub(super) path: String,
    pub(super) interval: String,
    pub(super) timeout: String,
    pub(super) rise: u32,
    pub(super) fall: u32,
    pub(super) port: u16,
}

impl Default for RawHealth {
    fn default() -> Self {
        RawHealth {
            path: default_health_path(),
            interval: default_health_interval(),
            timeout: default_health_timeout(),
            rise: default_rise_fall(),
            fall: default_rise_fall(),
            port: 0,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBackend {
    pub(super) id: String,
    pub(super) address: String,
    pub(super) max_sessions: Option<u32>,
    pub(super) max_rooms: Option<u32>,
    #[serde(default = "default_weight")]
    pub(super) weight: u32,
    #[serde(default)]
    pub(super) health_port: u16,
    #[serde(default)]
    pub(super) public_url: String,
}

pub(super) fn default_sustain() -> String {
    "30s".into()
}
pub(super) fn default_cooldown() -> String {
    "5m".into()
}
pub(super) fn default_hook_timeout() -> String {
    "60s".into()
}
pub(super) fn default_min_backends() -> usize {
    1
}
pub(super) fn default_turn_ttl() -> String {
    "24h".into()
}
pub(super) fn default_turn_auth() -> TurnAuth {
    TurnAuth::Session
}
pub(super) fn default_auth_user_header() -> String {
    "X-Auth-User".into()
}
pub(super) fn default_auth_cache() -> String {
    "10s".into()
}
pub(super) fn default_auth_timeout() -> String {
    "2s".into()
}
pub(super) fn default_turn_interval() -> String {
    "5s".into()
}
pub(super) fn default_discovery_mode() -> DiscoveryMode {
    DiscoveryMode::Proxy
}
pub(super) fn default_ws_path() -> String {
    "/".into()
}
pub(super) fn default_reservation() -> String {
    "10s".into()
}
pub(super) fn default_token_ttl() -> String {
    "1h".into()
}
pub(super) fn default_token_param() -> String {
    "rtcgate_pin".into()
}
pub(super) fn default_machine_param() -> String {
    "machine".into()
}
pub(super) fn default_on_down() -> OnDown {
    OnDown::Close
}
pub(super) fn default_cookie() -> String {
    "rtcgate".into()
}
fn zero_duration() -> String {
    "0s".into()
}
pub(super) fn default_same_site() -> SameSite {
    SameSite::Lax
}
pub(super) fn default_secure() -> Secure {
    Secure::Auto
}
pub(super) fn default_when_down() -> WhenDown {
    WhenDown::Repin
}
pub(super) fn default_hosts() -> Vec<String> {
    vec!["*".into()]
}
pub(super) fn default_room_balance_factor() -> f64 {
    1.25
}
pub(super) fn default_hard_cap() -> f64 {
    2.0
}
pub(super) fn default_max_sessions() -> u32 {
    500
}
pub(super) fn default_drain_timeout() -> String {
    "1h".into()
}
pub(super) fn default_health_path() -> String {
    "/health".into()
}
pub(super) fn default_health_interval() -> String {
    "2s".into()
}
pub(super) fn default_health_timeout() -> String {
    "1s".into()
}
pub(super) fn default_rise_fall() -> u32 {
    2
}
pub(super) fn default_weight() -> u32 {
    1
}
