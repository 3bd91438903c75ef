//! TURN servers' health, and the answers of the forward-auth service, as the TURN endpoint
//! reads them (`proxy::turn`). A server's state outlives reloads (the registry keeps it by URL);
//! the checker that moves it is `control::turn_health`'s.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use crate::config::TurnUrl;
use crate::state::health::RiseFall;

/// One configured TURN or STUN URL and its health.
#[derive(Debug)]
pub struct TurnServer {
    pub url: TurnUrl,
    pub health: RiseFall,
}

impl TurnServer {
    pub fn new(url: TurnUrl) -> TurnServer {
        TurnServer {
            url,
            health: RiseFall::new(true),
        }
    }
}

/// What the auth service said of one client's credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthAnswer {
    /// Allowed, as this user (none when the service named nobody).
    Allowed(Option<String>),
    /// Refused: 401 when the service said 401, else 403.
    Refused { status: u16, why: String },
}

/// Answers of the auth service by a digest of the client's `Cookie` and `Authorization`,
/// reused until they expire. Bounded: when full, expired answers go, then all.
#[derive(Debug, Default)]
pub struct AuthCache {
    answers: Mutex<HashMap<[u8; 32], (Instant, AuthAnswer)>>,
}

/// Answers kept at most.
const AUTH_CACHE_ENTRIES: usize = 10_000;

impl AuthCache {
    pub fn get(&self, key: &[u8; 32], now: Instant) -> Option<AuthAnswer> {
        let answers = self.answers.lock().unwrap_or_else(|e| e.into_inner());
        answers
            .get(key)
            .filter(|(until, _)| *until > now)
            .map(|(_, a)| a.clone())
    }

    pub fn put(&self, key: [u8; 32], until: Instant, answer: AuthAnswer, now: Instant) {
        let mut answers = self.answers.lock().unwrap_or_else(|e| e.into_inner());
        if answers.len() >= AUTH_CACHE_ENTRIES {
            answers.retain(|_, (u, _)| *u > now);
            if answers.len() >= AUTH_CACHE_ENTRIES {
                answers.clear();
            }
        }
        answers.insert(key, (until, answer));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn an_answer_is_reused_until_it_expires_and_the_cache_stays_bounded() {
        let (c, now) = (AuthCache::default(), Instant::now());
        let later = now + Duration::from_secs(10);
        c.put(
            [1; 32],
            later,
            AuthAnswer::Allowed(Some("alice".into())),
            now,
        );
        assert_eq!(
            c.get(&[1; 32], now),
            Some(AuthAnswer::Allowed(Some("alice".into())))
        );
        assert_eq!(c.get(&[1; 32], later), None, "expired");
        assert_eq!(c.get(&[2; 32], now), None);
        for i in 0..AUTH_CACHE_ENTRIES + 5 {
            let mut k = [0u8; 32];
            k[..8].copy_from_slice(&(i as u64).to_le_bytes());
            c.put(k, later, AuthAnswer::Allowed(None), now);
        }
        assert!(c.answers.lock().map(|a| a.len()).unwrap_or(0) <= AUTH_CACHE_ENTRIES);
    }
}
