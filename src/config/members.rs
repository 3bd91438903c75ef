//! Backends that are not the file's own lines: those added through the admin API (and the
//! state file that keeps them across restarts; `control::membership` changes them), and the
//! addresses of the file's backends named by DNS (`control::dns` resolves them). Here is how
//! both join the file's configuration.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;

use super::{ApiBackend, Config, ConfigError};

/// Backends added through the admin API, by (pool, id).
pub type ApiBackends = BTreeMap<(String, String), ApiBackend>;

/// The addresses each backend named by DNS resolved to last, by (pool, entry id); sorted, no
/// duplicates. An entry not resolved yet is absent.
pub type Resolved = BTreeMap<(String, String), Vec<SocketAddr>>;

/// `file` with each DNS entry's addresses as backends of its pool, and the API's backends
/// added; the file's own win a clash of ids.
pub fn merged(file: &Config, api: &ApiBackends, resolved: &Resolved) -> Config {
    let mut config = file.clone();
    for p in &mut config.pools {
        for d in &p.dns_backends {
            let Some(addresses) = resolved.get(&(p.name.clone(), d.id.clone())) else {
                continue;
            };
            for a in addresses {
                let b = d.at(*a);
                if p.backends.iter().any(|fb| fb.id == b.id) {
                    tracing::warn!(pool = %p.name, backend = %b.id, "the file lists a backend with the id of one of a DNS name's addresses: the file's wins");
                    continue;
                }
                p.backends.push(b);
            }
        }
    }
    for ((pool, id), b) in api {
        let Some(p) = config.pools.iter_mut().find(|p| p.name == *pool) else {
            tracing::warn!(%pool, backend = %id, "a backend added through the admin API names a pool the file no longer has; it waits for the pool");
            continue;
        };
        if p.backends.iter().any(|fb| fb.id == *id) {
            tracing::warn!(%pool, backend = %id, "the file lists a backend the admin API added too: the file's wins");
            continue;
        }
        match p.api_backend(&file.source, id, b) {
            Ok(bc) => p.backends.push(bc),
            Err(e) => {
                tracing::warn!(error = %e, "a backend added through the admin API is no longer valid; left out")
            }
        }
    }
    config
}

/// The state file's backends; none when there is no file yet. A file that does not parse is
/// an error: starting without the backends it lists would lose them at the next write.
pub fn load_state(path: &Path) -> Result<ApiBackends, ConfigError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(ApiBackends::new()),
        Err(e) => {
            return Err(ConfigError {
                file: path.to_path_buf(),
                key: "(file)".into(),
                msg: format!("cannot read: {e}"),
            })
        }
    };
    #[derive(serde::Deserialize)]
    struct Entry {
        pool: String,
        id: String,
        #[serde(flatten)]
        backend: ApiBackend,
    }
    let entries: Vec<Entry> = serde_json::from_str(&text).map_err(|e| ConfigError {
        file: path.to_path_buf(),
        key: "(document)".into(),
        msg: format!("not a state file: {e}"),
    })?;
    Ok(entries
        .into_iter()
        .map(|e| ((e.pool, e.id), e.backend))
        .collect())
}

pub fn save_state(path: &Path, api: &ApiBackends) -> Result<(), String> {
    let entries: Vec<serde_json::Value> = api
        .iter()
        .map(|((pool, id), b)| {
            let mut v = serde_json::to_value(b).unwrap_or_default();
            v["pool"] = pool.as_str().into();
            v["id"] = id.as_str().into();
            v
        })
        .collect();
    let text = serde_json::to_string_pretty(&entries).map_err(|e| e.to_string())?;
    let tmp = path.with_extension("json.new");
    std::fs::write(&tmp, text)
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| format!("{}: {e}", path.display()))
}
