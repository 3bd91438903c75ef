//! The session-persistence cookie: sign, verify, rotate. Pure functions that take `now`.
//!
//! A token is `kid:backend:expiry:tag`, where `tag` is HMAC-SHA256 (ring, verified in constant
//! time) over a domain label, the cookie name, the pool, the key id, the backend's stable id and
//! the expiry (unix seconds, `0` for none). Binding the pool and cookie name means a token minted
//! for one pool cannot pin a user in another. The token names a backend by its id, never by its
//! address. The first configured key signs; every key verifies, so keys rotate without breaking
//! live pins. Several rtcgate instances with the same keys honour each other's cookies.
//!
//! Pin tokens in URLs (handed out by discovery) have the same format and keys under a domain
//! label of their own, and always an expiry, so neither passes for the other.
//!
//! Reading and stripping the cookie from requests, and writing `Set-Cookie`, are here too, so
//! the format has one owner; what to do with a pin is `balance.rs`'s.

use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use cookie::Cookie;
use http::header::{self, HeaderMap, HeaderValue};
use ring::hmac;
use subtle::ConstantTimeEq;

use crate::config::{SameSite, Secure, Sticky, WhenDown};

/// Versioned domain label, so a future token format can never verify as this one.
const DOMAIN: &[u8] = b"rtcgate-sticky-v1";

/// The domain label of pin tokens in URLs (discovery's), so a token and a cookie value never
/// verify as each other.
const URL_DOMAIN: &[u8] = b"rtcgate-pin-token-v1";

/// Where a token travels: the two are signed apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Carrier {
    Cookie,
    /// A query parameter of a URL that discovery handed out; always has an expiry.
    Url,
}

/// Re-issue a pinned user's cookie once less than this share of `max_age` is left, so an active
/// user is never dropped from their backend by expiry.
const REFRESH_WHEN_LEFT: u32 = 2;

/// The configured sticky keys and cookie attributes, ready to sign and verify.
pub struct StickyCookie {
    name: String,
    /// The first signs; all verify.
    keys: Vec<(String, hmac::Key)>,
    max_age: Option<Duration>,
    same_site: SameSite,
    secure: Secure,
    pub when_down: WhenDown,
}

impl std::fmt::Debug for StickyCookie {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StickyCookie")
            .field("name", &self.name)
            .field(
                "keys",
                &self.keys.iter().map(|(id, _)| id).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

/// What a request's cookie says about its pin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CookiePin<'a> {
    /// No cookie of ours.
    None,
    /// A cookie of ours that does not verify: forged, tampered, truncated, expired, unknown key.
    Invalid,
    /// A verified pin to the backend with this id.
    Valid {
        backend: &'a str,
        /// Whether the token is near its expiry and should be re-issued.
        refresh: bool,
    },
}

impl StickyCookie {
    pub fn new(config: &Sticky) -> StickyCookie {
        StickyCookie {
            name: config.cookie.clone(),
            keys: config
                .keys
                .iter()
                .map(|k| (k.id.clone(), hmac::Key::new(hmac::HMAC_SHA256, &k.secret)))
                .collect(),
            max_age: Some(config.max_age).filter(|d| !d.is_zero()),
            same_site: config.same_site,
            secure: config.secure,
            when_down: config.when_down,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    fn tag(
        &self,
        carrier: Carrier,
        key: &hmac::Key,
        pool: &str,
        kid: &str,
        backend: &str,
        expiry: &str,
    ) -> hmac::Tag {
        let (domain, name) = match carrier {
            Carrier::Cookie => (DOMAIN, self.name.as_bytes()),
            Carrier::Url => (URL_DOMAIN, &b""[..]),
        };
        let mut ctx = hmac::Context::with_key(key);
        for part in [
            domain,
            name,
            pool.as_bytes(),
            kid.as_bytes(),
            backend.as_bytes(),
            expiry.as_bytes(),
        ] {
            // Length-prefixed, so no two different field lists hash alike.
            ctx.update(&(part.len() as u32).to_be_bytes());
            ctx.update(part);
        }
        ctx.sign()
    }

    /// A token pinning a user of `pool` to `backend`, signed with the first key.
    pub fn sign(&self, pool: &str, backend: &str, now: u64) -> String {
        let expiry = self.max_age.map_or(0, |d| now.saturating_add(d.as_secs()));
        self.sign_as(Carrier::Cookie, pool, backend, expiry)
    }

    /// A pin token for a URL (discovery's), honoured until `expiry` (unix seconds).
    pub fn sign_url_token(&self, pool: &str, backend: &str, expiry: u64) -> String {
        self.sign_as(Carrier::Url, pool, backend, expiry.max(1))
    }

    fn sign_as(&self, carrier: Carrier, pool: &str, backend: &str, expiry: u64) -> String {
        let expiry = expiry.to_string();
        let (kid, key) = &self.keys[0];
        let tag = self.tag(carrier, key, pool, kid, backend, &expiry);
        format!(
            "{kid}:{backend}:{expiry}:{}",
            URL_SAFE_NO_PAD.encode(tag.as_ref())
        )
    }

    /// Verifies a cookie's token for `pool` at time `now` (unix seconds).
    pub fn verify<'t>(&self, pool: &str, token: &'t str, now: u64) -> CookiePin<'t> {
        self.verify_as(Carrier::Cookie, pool, token, now)
    }

    /// Verifies a URL's pin token for `pool` at time `now`: as a cookie's, but it must carry
    /// an expiry, and it is never due for a refresh (a cookie is what gets refreshed).
    pub fn verify_url_token<'t>(&self, pool: &str, token: &'t str, now: u64) -> CookiePin<'t> {
        self.verify_as(Carrier::Url, pool, token, now)
    }

    fn verify_as<'t>(
        &self,
        carrier: Carrier,
        pool: &str,
        token: &'t str,
        now: u64,
    ) -> CookiePin<'t> {
        let mut parts = token.splitn(4, ':');
        let (Some(kid), Some(backend), Some(expiry), Some(tag)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return CookiePin::Invalid;
        };
        let Some((_, key)) = self.keys.iter().find(|(id, _)| id == kid) else {
            return CookiePin::Invalid;
        };
        let Ok(exp) = expiry.parse::<u64>() else {
            return CookiePin::Invalid;
        };
        // 32 bytes of tag are 43 base64 characters; anything else is not ours.
        let mut raw = [0u8; 33];
        match URL_SAFE_NO_PAD.decode_slice(tag, &mut raw) {
            Ok(32) => {}
            _ => return CookiePin::Invalid,
        }
        let msg = self.tag(carrier, key, pool, kid, backend, expiry);
        if !bool::from(msg.as_ref().ct_eq(&raw[..32])) {
            return CookiePin::Invalid;
        }
        if exp != 0 && exp <= now {
            return CookiePin::Invalid;
        }
        if carrier == Carrier::Url {
            return match exp {
                0 => CookiePin::Invalid,
                _ => CookiePin::Valid {
                    backend,
                    refresh: false,
                },
            };
        }
        // A token minted under another `max_age` (0 = session cookie) is re-issued under this one.
        let refresh = match self.max_age {
            None => exp != 0,
            Some(max_age) => {
                exp == 0 || exp - now < max_age.as_secs() / u64::from(REFRESH_WHEN_LEFT)
            }
        };
        CookiePin::Valid { backend, refresh }
    }

    /// The pin carried by `headers` for `pool`: the first cookie of ours that verifies.
    /// `cached` gives a backend's precomputed session token ([`PinCache`]), when it has one.
    pub fn pin<'h, 'c>(
        &self,
        headers: &'h HeaderMap,
        pool: &str,
        now: u64,
        cached: impl Fn(&str) -> Option<&'c PinCache>,
    ) -> CookiePin<'h> {
        let mut seen = false;
        for value in self.values(headers) {
            seen = true;
            let Ok(value) = std::str::from_utf8(value) else {
                continue;
            };
            // Fast path: a session token signed with the current key equals the precomputed one.
            let backend = value.split(':').nth(1).unwrap_or("");
            if let Some(c) = cached(backend) {
                if bool::from(c.token.as_bytes().ct_eq(value.as_bytes())) {
                    return CookiePin::Valid {
                        backend,
                        refresh: false,
                    };
                }
            }
            if let p @ CookiePin::Valid { .. } = self.verify(pool, value, now) {
                return p;
            }
        }
        if seen {
            CookiePin::Invalid
        } else {
            CookiePin::None
        }
    }

    /// The values of our cookie in the request's `Cookie` fields. Read as bytes: one byte a
    /// header string cannot hold elsewhere in the field must not hide our cookie.
    fn values<'h>(&self, headers: &'h HeaderMap) -> impl Iterator<Item = &'h [u8]> + use<'h, '_> {
        headers
            .get_all(header::COOKIE)
            .iter()
            .flat_map(|v| v.as_bytes().split(|&b| b == b';'))
            .filter_map(|pair| {
                let (name, value) = split_pair(pair)?;
                (name == self.name.as_bytes()).then(|| unquote(value))
            })
    }

    /// Removes our cookie from the request, leaving the user's other cookies byte for byte.
    pub fn strip(&self, headers: &mut HeaderMap) {
        let ours = |pair: &[u8]| split_pair(pair).is_some_and(|(n, _)| n == self.name.as_bytes());
        let has_ours = headers
            .get_all(header::COOKIE)
            .iter()
            .any(|v| v.as_bytes().split(|&b| b == b';').any(ours));
        if !has_ours {
            return;
        }
        let kept: Vec<HeaderValue> = headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| {
                let rest: Vec<&[u8]> = v
                    .as_bytes()
                    .split(|&b| b == b';')
                    .map(<[u8]>::trim_ascii)
                    .filter(|pair| !pair.is_empty() && !ours(pair))
                    .collect();
                (!rest.is_empty())
                    .then(|| HeaderValue::from_bytes(&rest.join(&b"; "[..])).ok())
                    .flatten()
            })
            .collect();
        headers.remove(header::COOKIE);
        for v in kept {
            headers.append(header::COOKIE, v);
        }
    }

    /// The precomputed token and `Set-Cookie` values of `backend`, when cookies carry no expiry
    /// (`max_age = 0`): the token is then the same for every user of that backend, so neither
    /// placing a new user nor recognising a returning one needs an HMAC per request.
    pub fn cache_for(&self, pool: &str, backend: &str) -> Option<PinCache> {
        if self.max_age.is_some() {
            return None;
        }
        Some(PinCache {
            token: self.sign(pool, backend, 0),
            set_cookie: [
                self.set_cookie(pool, backend, 0, false),
                self.set_cookie(pool, backend, 0, true),
            ],
        })
    }

    /// The `Set-Cookie` value pinning a user of `pool` to `backend`.
    pub fn set_cookie(&self, pool: &str, backend: &str, now: u64, over_tls: bool) -> HeaderValue {
        let token = self.sign(pool, backend, now);
        let same_site = match self.same_site {
            SameSite::Lax => cookie::SameSite::Lax,
            SameSite::Strict => cookie::SameSite::Strict,
            SameSite::None => cookie::SameSite::None,
        };
        let secure = self.same_site == SameSite::None
            || match self.secure {
                Secure::Auto => over_tls,
                Secure::Always => true,
                Secure::Never => false,
            };
        let mut c = Cookie::build((self.name.as_str(), token))
            .path("/")
            .http_only(true)
            .same_site(same_site)
            .secure(secure);
        if let Some(d) = self.max_age {
            let secs = i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
            c = c.max_age(cookie::time::Duration::seconds(secs));
        }
        // Names are validated as tokens and the value is base64url and id characters only.
        HeaderValue::from_str(&c.build().to_string()).unwrap_or(HeaderValue::from_static(""))
    }
}

/// A backend's session-cookie token and `Set-Cookie` values, computed once per snapshot.
#[derive(Debug, Clone)]
pub struct PinCache {
    token: String,
    /// Over plain HTTP, over TLS.
    set_cookie: [HeaderValue; 2],
}

impl PinCache {
    pub fn set_cookie(&self, over_tls: bool) -> HeaderValue {
        self.set_cookie[usize::from(over_tls)].clone()
    }
}

/// `name=value` with spaces around each trimmed; `None` without an `=`.
fn split_pair(pair: &[u8]) -> Option<(&[u8], &[u8])> {
    let eq = pair.iter().position(|&b| b == b'=')?;
    Some((pair[..eq].trim_ascii(), pair[eq + 1..].trim_ascii()))
}

/// A cookie value without the double quotes RFC 6265 allows around it.
fn unquote(v: &[u8]) -> &[u8] {
    v.strip_prefix(b"\"")
        .and_then(|v| v.strip_suffix(b"\""))
        .unwrap_or(v)
}

/// Unix time in seconds.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::StickyKey;

    fn sticky(keys: &[(&str, &str)], max_age: u64) -> StickyCookie {
        StickyCookie::new(&Sticky {
            cookie: "rtcgate".into(),
            keys: keys
                .iter()
                .map(|(id, s)| StickyKey {
                    id: id.to_string(),
                    secret: s.as_bytes().to_vec(),
                })
                .collect(),
            max_age: Duration::from_secs(max_age),
            same_site: SameSite::Lax,
            secure: Secure::Auto,
            when_down: WhenDown::Repin,
        })
    }

    const S1: &str = "secret-one-0123456789abcdef0123456789";
    const S2: &str = "secret-two-0123456789abcdef0123456789";

    #[test]
    fn a_signed_token_verifies_and_names_its_backend() {
        let s = sticky(&[("k1", S1)], 0);
        let t = s.sign("media", "media-2", 1000);
        assert!(!t.contains("127.0.0.1"));
        assert_eq!(
            s.verify("media", &t, 5000),
            CookiePin::Valid {
                backend: "media-2",
                refresh: false
            }
        );
    }

    #[test]
    fn tampering_anywhere_breaks_the_token() {
        let s = sticky(&[("k1", S1)], 0);
        let t = s.sign("media", "media-2", 1000);
        assert_eq!(
            s.verify("media", &t.replace("media-2", "media-3"), 1000),
            CookiePin::Invalid
        );
        assert_eq!(
            s.verify("other-pool", &t, 1000),
            CookiePin::Invalid,
            "bound to the pool"
        );
        assert_eq!(
            s.verify("media", &t[..t.len() - 1], 1000),
            CookiePin::Invalid,
            "truncated"
        );
        let mut flipped = t.clone().into_bytes();
        let last = flipped.len() - 2;
        flipped[last] = if flipped[last] == b'A' { b'B' } else { b'A' };
        assert_eq!(
            s.verify(
                "media",
                &String::from_utf8(flipped).unwrap_or_default(),
                1000
            ),
            CookiePin::Invalid
        );
        assert_eq!(s.verify("media", "garbage", 1000), CookiePin::Invalid);
        assert_eq!(s.verify("media", "k1:media-2:0:", 1000), CookiePin::Invalid);
    }

    #[test]
    fn rotation_old_keys_verify_the_first_signs() {
        let old = sticky(&[("k1", S1)], 0);
        let rotated = sticky(&[("k2", S2), ("k1", S1)], 0);
        let t = old.sign("media", "m1", 0);
        assert_eq!(
            rotated.verify("media", &t, 0),
            CookiePin::Valid {
                backend: "m1",
                refresh: false
            }
        );
        assert!(rotated.sign("media", "m1", 0).starts_with("k2:"));
        let dropped = sticky(&[("k2", S2)], 0);
        assert_eq!(
            dropped.verify("media", &t, 0),
            CookiePin::Invalid,
            "unknown key id"
        );
    }

    #[test]
    fn expiry_is_enforced_and_refreshed_past_half_life() {
        let s = sticky(&[("k1", S1)], 100);
        let t = s.sign("media", "m1", 1000);
        assert_eq!(
            s.verify("media", &t, 1010),
            CookiePin::Valid {
                backend: "m1",
                refresh: false
            }
        );
        assert_eq!(
            s.verify("media", &t, 1060),
            CookiePin::Valid {
                backend: "m1",
                refresh: true
            }
        );
        assert_eq!(s.verify("media", &t, 1100), CookiePin::Invalid);
    }

    #[test]
    fn url_tokens_expire_and_never_pass_for_cookies() {
        let s = sticky(&[("k1", S1)], 0);
        let t = s.sign_url_token("media", "m1", 2000);
        assert_eq!(
            s.verify_url_token("media", &t, 1999),
            CookiePin::Valid {
                backend: "m1",
                refresh: false
            }
        );
        assert_eq!(s.verify_url_token("media", &t, 2000), CookiePin::Invalid);
        assert_eq!(s.verify_url_token("other", &t, 1000), CookiePin::Invalid);
        assert_eq!(
            s.verify("media", &t, 1000),
            CookiePin::Invalid,
            "not a cookie"
        );
        let cookie = s.sign("media", "m1", 1000);
        assert_eq!(
            s.verify_url_token("media", &cookie, 1000),
            CookiePin::Invalid,
            "a cookie value is not a URL token"
        );
    }

    #[test]
    fn strip_keeps_other_cookies_exactly() {
        let s = sticky(&[("k1", S1)], 0);
        let mut h = HeaderMap::new();
        h.append(
            header::COOKIE,
            HeaderValue::from_static("a=1; rtcgate=xyz; b=\"q r\""),
        );
        h.append(header::COOKIE, HeaderValue::from_static("rtcgate=again"));
        s.strip(&mut h);
        let all: Vec<_> = h.get_all(header::COOKIE).iter().collect();
        assert_eq!(all, vec!["a=1; b=\"q r\""]);
    }

    #[test]
    fn a_non_ascii_byte_elsewhere_does_not_hide_our_cookie() {
        let s = sticky(&[("k1", S1)], 0);
        let token = s.sign("media", "m1", 0);
        let mut h = HeaderMap::new();
        let line = format!("name=caf\u{e9}; rtcgate={token}; b=2");
        h.insert(
            header::COOKIE,
            HeaderValue::from_bytes(line.as_bytes()).expect("obs-text"),
        );
        let pin = s.pin(&h, "media", 0, |_| None);
        assert_eq!(
            pin,
            CookiePin::Valid {
                backend: "m1",
                refresh: false
            }
        );
        s.strip(&mut h);
        let left = h
            .get(header::COOKIE)
            .expect("others kept")
            .as_bytes()
            .to_vec();
        assert_eq!(left, "name=caf\u{e9}; b=2".as_bytes());
    }

    #[test]
    fn set_cookie_has_the_configured_attributes() {
        let s = sticky(&[("k1", S1)], 3600);
        let v = s.set_cookie("media", "m1", 0, true);
        let v = v.to_str().unwrap_or_default();
        for attr in [
            "rtcgate=k1:m1:3600:",
            "HttpOnly",
            "Path=/",
            "SameSite=Lax",
            "Secure",
            "Max-Age=3600",
        ] {
            assert!(v.contains(attr), "{attr} missing from {v}");
        }
        let plain = sticky(&[("k1", S1)], 0).set_cookie("media", "m1", 0, false);
        assert!(!plain.to_str().unwrap_or_default().contains("Secure"));
        assert!(!plain.to_str().unwrap_or_default().contains("Max-Age"));
    }
}
