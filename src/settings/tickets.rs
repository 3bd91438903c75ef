//! TLS session tickets: stateless resumption (TLS 1.3 tickets, TLS 1.2 RFC 5077 tickets), so that
//! every returning client can resume, not only the last few hundred a session cache would hold.
//!
//! Without `[tls] ticket_keys`, rustls's own ticketer: random keys, rotated every 6 hours, kept
//! for the life of the process (across reloads), so a client resumes on the instance it left.
//! With it, the keys come from a file that several instances share: one base64 key per line
//! (`openssl rand 80 | base64 -w0`, the key files HAProxy's `tls-ticket-keys` takes; 48 bytes
//! are enough), the first line encrypts new tickets and every line decrypts, so a client
//! resumes on whichever instance it reaches. Rotation is the operator's: put a new key first on
//! every instance, and drop the last one once its tickets' lifetime is over. The file is read
//! again when it changes, like the certificates.
//!
//! A ticket is `key name (16) ‖ nonce (12) ‖ ChaCha20-Poly1305(state) ‖ tag (16)`, the key name
//! being the first 16 bytes of the key's line and the AEAD key its last 32, the layout rustls's
//! own ticketer uses.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use base64::Engine;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305};
use ring::rand::{SecureRandom, SystemRandom};
use rustls::server::ProducesTickets;

/// How long clients are told a ticket is good for; the keys' rotation is what ends it.
pub const LIFETIME_SECS: u32 = 12 * 60 * 60;

const NAME: usize = 16;
const NONCE: usize = 12;
const TAG: usize = 16;
/// Largest ticket decrypted: a rustls session state is a few hundred bytes (certificate chains
/// are not in it); anything much longer is not one of ours.
const MAX_TICKET: usize = 4096;

/// The process's own ticketer, for when no key file is named: made once, so that a reload
/// (which builds a new `ServerConfig`) keeps every ticket issued so far valid.
pub fn process_ticketer() -> Result<Arc<dyn ProducesTickets>, String> {
    static OWN: OnceLock<Arc<dyn ProducesTickets>> = OnceLock::new();
    if let Some(t) = OWN.get() {
        return Ok(t.clone());
    }
    let t = rustls::crypto::ring::Ticketer::new().map_err(|e| e.to_string())?;
    Ok(OWN.get_or_init(|| t).clone())
}

/// Tickets under the keys of a shared file.
pub struct FileTicketer {
    keys: Vec<([u8; NAME], LessSafeKey)>,
    rng: SystemRandom,
    /// The longest ticket this instance made, so longer ones are refused before any work (as
    /// rustls's ticketer does, against partitioning-oracle attacks).
    longest: AtomicUsize,
}

impl std::fmt::Debug for FileTicketer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileTicketer")
            .field("keys", &self.keys.len())
            .finish_non_exhaustive()
    }
}

impl FileTicketer {
    /// Reads the keys of `path`; an error names the line.
    pub fn load(path: &Path) -> Result<FileTicketer, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        FileTicketer::parse(&text)
    }

    /// The keys of a key file's `text`: one base64 key of 48 or 80 bytes per line; blank lines
    /// and lines starting with `#` are skipped.
    pub fn parse(text: &str) -> Result<FileTicketer, String> {
        let mut keys = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(line)
                .map_err(|_| format!("line {}: not base64", i + 1))?;
            if bytes.len() != 48 && bytes.len() != 80 {
                return Err(format!(
                    "line {}: a key is 48 or 80 bytes (openssl rand 80 | base64 -w0), not {}",
                    i + 1,
                    bytes.len()
                ));
            }
            let mut name = [0u8; NAME];
            name.copy_from_slice(&bytes[..NAME]);
            if keys.iter().any(|(n, _)| *n == name) {
                return Err(format!("line {}: the same key name twice", i + 1));
            }
            let key = UnboundKey::new(&CHACHA20_POLY1305, &bytes[bytes.len() - 32..])
                .map_err(|_| format!("line {}: not a key", i + 1))?;
            keys.push((name, LessSafeKey::new(key)));
        }
        if keys.is_empty() {
            return Err("no key in the file".into());
        }
        Ok(FileTicketer {
            keys,
            rng: SystemRandom::new(),
            longest: AtomicUsize::new(0),
        })
    }
}

impl ProducesTickets for FileTicketer {
    fn enabled(&self) -> bool {
        true
    }

    fn lifetime(&self) -> u32 {
        LIFETIME_SECS
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        let (name, key) = self.keys.first()?;
        let mut nonce = [0u8; NONCE];
        self.rng.fill(&mut nonce).ok()?;
        let mut ticket = Vec::with_capacity(NAME + NONCE + plain.len() + TAG);
        ticket.extend_from_slice(name);
        ticket.extend_from_slice(&nonce);
        ticket.extend_from_slice(plain);
        let tag = key
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(name),
                &mut ticket[NAME + NONCE..],
            )
            .ok()?;
        ticket.extend_from_slice(tag.as_ref());
        self.longest.fetch_max(ticket.len(), Ordering::Relaxed);
        Some(ticket)
    }

    fn decrypt(&self, ticket: &[u8]) -> Option<Vec<u8>> {
        // Another instance's tickets may be longer than any made here: bound by the format.
        if ticket.len() > MAX_TICKET.max(self.longest.load(Ordering::Relaxed))
            || ticket.len() < NAME + NONCE + TAG
        {
            return None;
        }
        let (name, rest) = ticket.split_at(NAME);
        let (nonce, sealed) = rest.split_at(NONCE);
        let (_, key) = self.keys.iter().find(|(n, _)| n[..] == *name)?;
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut buf = sealed.to_vec();
        let plain_len = key
            .open_in_place(nonce, Aad::from(name), &mut buf)
            .ok()?
            .len();
        buf.truncate(plain_len);
        Some(buf)
    }
}

/// The ticketer for a config: the shared file's keys, or the process's own.
pub fn ticketer(file: Option<&Path>) -> Result<Arc<dyn ProducesTickets>, String> {
    match file {
        Some(path) => Ok(Arc::new(FileTicketer::load(path)?)),
        None => process_ticketer(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key_line(seed: u8) -> String {
        base64::engine::general_purpose::STANDARD.encode([seed; 80])
    }

    #[test]
    fn the_first_key_encrypts_and_every_key_decrypts() {
        let (old, new) = (key_line(1), key_line(2));
        let before = FileTicketer::parse(&old).expect("one key");
        let ticket = before.encrypt(b"session state").expect("sealed");
        let rotated = FileTicketer::parse(&format!("# rotated\n{new}\n\n{old}\n")).expect("two");
        assert_eq!(
            rotated.decrypt(&ticket).as_deref(),
            Some(&b"session state"[..])
        );
        let fresh = rotated.encrypt(b"newer").expect("sealed");
        assert_eq!(&fresh[..NAME], &[2u8; NAME], "named by the first key");
        assert!(
            before.decrypt(&fresh).is_none(),
            "the old file lacks the new key"
        );
        let dropped = FileTicketer::parse(&new).expect("one key");
        assert!(
            dropped.decrypt(&ticket).is_none(),
            "a dropped key's tickets are refused"
        );
    }

    #[test]
    fn tampered_short_and_long_tickets_are_refused() {
        let t = FileTicketer::parse(&key_line(3)).expect("key");
        let mut ticket = t.encrypt(b"state").expect("sealed");
        let last = ticket.len() - 1;
        ticket[last] ^= 1;
        assert!(t.decrypt(&ticket).is_none());
        assert!(t.decrypt(&ticket[..NAME + NONCE + TAG - 1]).is_none());
        assert!(t.decrypt(&vec![3u8; MAX_TICKET + 1]).is_none());
    }

    #[test]
    fn bad_key_files_name_the_line() {
        for (text, says) in [
            ("", "no key"),
            ("!!!", "line 1: not base64"),
            ("\nAAAA", "line 2: a key is 48 or 80 bytes"),
        ] {
            let e = FileTicketer::parse(text).expect_err(text);
            assert!(e.contains(says), "{text:?}: {e}");
        }
        let twice = format!("{}\n{}", key_line(4), key_line(4));
        assert!(FileTicketer::parse(&twice)
            .expect_err("twice")
            .contains("line 2"));
    }
}
