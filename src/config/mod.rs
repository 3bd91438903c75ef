//! `proxy.toml`: raw serde structs (unknown keys rejected) validated into a typed [`Config`].
//!
//! Owns parsing and validation only. Every error names the file and the key (`pools.media.
//! backends[1].address`), so an operator can fix it without reading code. Nothing here opens a
//! socket; certificate files are checked for existence here and parsed by `settings::tls`.
//!
//! `types.rs` holds the typed configuration that the rest of rtcgate reads (re-exported here),
//! `raw.rs` the file as written, `validate.rs` the step from one to the other; this file reads
//! the file and reports where toml itself failed.

use std::path::Path;

pub mod members;
mod raw;
mod types;
mod validate;

pub use types::*;

use raw::RawConfig;
use validate::Validator;

impl Config {
    /// Reads, parses and validates `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.to_path_buf(),
            key: "(file)".into(),
            msg: format!("cannot read: {e}"),
        })?;
        Config::parse(&text, path)
    }

    /// Parses and validates `text` as if read from `path` (relative files resolve against its
    /// folder, and must exist).
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let v = Validator { file: path };
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            let key = e
                .span()
                .map(|s| key_at(text, s.start))
                .unwrap_or_else(|| "(document)".into());
            v.err(key, e.message().to_string())
        })?;
        v.config(raw)
    }
}

impl PoolConfig {
    /// The backend `id` the admin API describes, checked as the file's backends are (the
    /// error names `pools.POOL.backends.ID.KEY`).
    pub fn api_backend(
        &self,
        source: &Path,
        id: &str,
        b: &ApiBackend,
    ) -> Result<BackendConfig, ConfigError> {
        let v = Validator { file: source };
        let defaults = validate::BackendDefaults {
            max_sessions: self.max_sessions,
            max_rooms: self.max_rooms,
            health_port: self.health.port,
        };
        let raw = raw::RawBackend {
            id: id.to_string(),
            address: b.address.clone(),
            max_sessions: b.max_sessions,
            max_rooms: b.max_rooms,
            weight: b.weight.unwrap_or(1),
            health_port: 0,
            public_url: b.public_url.clone().unwrap_or_default(),
        };
        let key = format!("pools.{}.backends.{id}", self.name);
        match v.backend(&key, &defaults, raw)? {
            validate::Member::Fixed(b) => Ok(b),
            validate::Member::Dns(_) => Err(ConfigError {
                file: source.to_path_buf(),
                key: format!("{key}.address"),
                msg: format!("{:?}: a server registering itself names its own IP:port; DNS names belong in the file", b.address),
            }),
        }
    }
}

/// The text of the line holding byte `at`, trimmed: the key toml complained about, in context.
fn key_at(text: &str, at: usize) -> String {
    let start = text[..at.min(text.len())].rfind('\n').map_or(0, |i| i + 1);
    let end = text[start..].find('\n').map_or(text.len(), |i| start + i);
    let line_no = text[..start].matches('\n').count() + 1;
    format!("line {line_no} `{}`", text[start..end].trim())
}
