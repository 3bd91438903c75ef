//! Certificates → `rustls::ServerConfig`: ALPN `h2` and `http/1.1`, a default certificate and more
//! chosen by SNI.
//!
//! Built from a validated [`Config`] and kept in the snapshot, so a reload swaps certificates for
//! new handshakes while existing connections keep theirs. The handshake itself (and its timeout)
//! belongs to `server::connection`.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;

use crate::config::{CertFiles, Config, ConfigError};

/// The ALPN protocols offered, most preferred first.
pub const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// The crypto provider rtcgate uses everywhere (ring: small, no C toolchain beyond `cc`).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Builds the TLS server config of `config`, or `None` when it has no `[tls]`.
pub fn server_config(config: &Config) -> Result<Option<Arc<ServerConfig>>, ConfigError> {
    let Some(files) = &config.tls else {
        return Ok(None);
    };
    let provider = provider();
    let err = |key: &str, msg: String| ConfigError {
        file: config.source.clone(),
        key: key.to_string(),
        msg,
    };
    let default = load_key_pair(&files.default, &provider).map_err(|m| err("tls", m))?;
    let mut resolver = SniResolver {
        exact: HashMap::new(),
        wildcard: HashMap::new(),
        default,
    };
    for (i, sni) in files.sni.iter().enumerate() {
        let key = format!("tls.sni[{i}]");
        let ck = load_key_pair(&sni.files, &provider).map_err(|m| err(&key, m))?;
        for name in &sni.names {
            match name.strip_prefix("*.") {
                Some(suffix) => resolver.wildcard.insert(suffix.to_string(), ck.clone()),
                None => resolver.exact.insert(name.clone(), ck.clone()),
            };
        }
    }
    let mut tls = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| err("tls", e.to_string()))?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(resolver));
    tls.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
    // Stateless resumption: every returning client can resume, not only those a session cache
    // still holds; with a shared key file, on any instance.
    tls.ticketer = super::tickets::ticketer(files.ticket_keys.as_deref())
        .map_err(|m| err("tls.ticket_keys", m))?;
    Ok(Some(Arc::new(tls)))
}

fn load_key_pair(
    files: &CertFiles,
    provider: &CryptoProvider,
) -> Result<Arc<CertifiedKey>, String> {
    let chain = read_certs(&files.cert)?;
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| format!("{}: no usable private key ({e})", files.key.display()))?;
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| format!("{}: unsupported private key ({e})", files.key.display()))?;
    let ck = CertifiedKey::new(chain, signing);
    ck.keys_match().map_err(|e| {
        format!(
            "{} and {} do not belong together ({e})",
            files.cert.display(),
            files.key.display()
        )
    })?;
    Ok(Arc::new(ck))
}

pub(super) fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let chain = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{}: cannot read certificates ({e})", path.display()))?;
    if chain.is_empty() {
        return Err(format!("{}: holds no PEM certificate", path.display()));
    }
    Ok(chain)
}

/// Picks a certificate by SNI: an exact name, then a one-label wildcard, then the default.
#[derive(Debug)]
struct SniResolver {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// Keyed by the suffix after `*.`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Arc<CertifiedKey>,
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let Some(name) = hello.server_name() else {
            return Some(self.default.clone());
        };
        // rustls hands us the name lower-cased and validated as a DNS name.
        if let Some(ck) = self.exact.get(name) {
            return Some(ck.clone());
        }
        if let Some((_, parent)) = name.split_once('.') {
            if let Some(ck) = self.wildcard.get(parent) {
                return Some(ck.clone());
            }
        }
        Some(self.default.clone())
    }
}
