//! Run-time membership, the cloud-agnostic way to grow and shrink a pool: a new server
//! registers itself (`PUT /pools/{pool}/backends/{id}`), a retired one is drained and removed at
//! zero (`DELETE`), without touching the file.
//!
//! The snapshot is built from the file's configuration merged with the API's backends: the
//! file wins on a clash of ids, and says so in the log. A reload re-reads the file and merges
//! again, so API backends survive it; with `[admin] state_file` they are written to a JSON file
//! (a new file renamed over the old) and read back at start, so they survive a restart too.

use std::sync::Arc;

use crate::config::members::{merged, save_state, ApiBackends};
use crate::config::{ApiBackend, Config, ConfigError};
use crate::control::runtime::Runtime;
use crate::state::snapshot::Snapshot;

/// Why a membership call was refused.
#[derive(Debug)]
pub enum MemberError {
    NoSuchPool,
    /// The file lists this id: the file is where it changes.
    InTheFile,
    NotFound,
    Invalid(ConfigError),
    /// The state file could not be written; nothing changed.
    StateFile(String),
}

impl Runtime {
    /// Adds or updates backend `id` of `pool`; returns whether it is new.
    pub fn put_backend(&self, pool: &str, id: &str, b: ApiBackend) -> Result<bool, MemberError> {
        let _one_at_a_time = self.reloading.lock().unwrap_or_else(|e| e.into_inner());
        let file = self.file_config();
        let p = file
            .pools
            .iter()
            .find(|p| p.name == pool)
            .ok_or(MemberError::NoSuchPool)?;
        if p.backends.iter().any(|fb| fb.id == id) {
            return Err(MemberError::InTheFile);
        }
        p.api_backend(&file.source, id, &b)
            .map_err(MemberError::Invalid)?;
        let mut api = self.api_backends();
        let key = (pool.to_string(), id.to_string());
        let previous = api.insert(key.clone(), b);
        if let Err(e) = self.persist(&api) {
            match previous {
                Some(p) => api.insert(key, p),
                None => api.remove(&key),
            };
            return Err(MemberError::StateFile(e));
        }
        tracing::info!(event = "member_set", %pool, backend = %id, new = previous.is_none(), "backend set through the admin API");
        let what = if previous.is_none() {
            "added"
        } else {
            "updated"
        };
        self.shared().events.push("member_set", pool, id, what);
        self.rebuild(&file, &api);
        Ok(previous.is_none())
    }

    /// Drains backend `id` of `pool` out: it takes no new users, and is removed once nothing is
    /// left on it (or at its pool's `drain_timeout`).
    pub fn delete_backend(&self, pool: &str, id: &str) -> Result<(), MemberError> {
        let _one_at_a_time = self.reloading.lock().unwrap_or_else(|e| e.into_inner());
        let file = self.file_config();
        let mut api = self.api_backends();
        let key = (pool.to_string(), id.to_string());
        let Some(previous) = api.remove(&key) else {
            let listed = file
                .pools
                .iter()
                .any(|p| p.name == pool && p.backends.iter().any(|b| b.id == id));
            return Err(if listed {
                MemberError::InTheFile
            } else {
                MemberError::NotFound
            });
        };
        if let Err(e) = self.persist(&api) {
            api.insert(key, previous);
            return Err(MemberError::StateFile(e));
        }
        tracing::info!(event = "member_deleted", %pool, backend = %id, "backend deleted through the admin API: draining out");
        self.shared()
            .events
            .push("member_deleted", pool, id, "draining out");
        self.rebuild(&file, &api);
        self.registry.remove_when_drained(pool, id);
        Ok(())
    }

    /// Whether backend `id` of `pool` was added through the admin API.
    pub fn from_api(&self, pool: &str, id: &str) -> bool {
        self.api_backends()
            .contains_key(&(pool.to_string(), id.to_string()))
    }

    fn persist(&self, api: &ApiBackends) -> Result<(), String> {
        match &self.file_config().admin.state_file {
            Some(path) => save_state(path, api),
            None => Ok(()),
        }
    }

    /// A snapshot of `file` merged with `api`, published, with the checkers brought in line.
    pub(super) fn rebuild(&self, file: &Config, api: &ApiBackends) {
        let current = self.shared().snapshot_full();
        let snap = Arc::new(Snapshot::assemble(
            merged(file, api, &self.dns.resolved()),
            current.tls.clone(),
            &self.registry,
        ));
        self.shared().publish(snap.clone());
        self.health.sync(&snap);
        self.turn_health.sync(&snap);
    }
}
