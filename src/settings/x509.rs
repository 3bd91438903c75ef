//! What a certificate file says, for a person reading `rtcgate check`: how many certificates
//! it holds, and the leaf's subject common name, DNS names and expiry (parsed by the
//! `x509-parser` crate).
//!
//! Serving never reads this: rustls and webpki parse certificates for the handshake. Anything
//! the parser does not find is left out (`None`, no names), never an error: the file has already
//! been judged usable.

use std::path::Path;
use std::time::{Duration, SystemTime};

use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

/// A PEM certificate chain as a person wants to see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainInfo {
    /// Certificates in the file, leaf first.
    pub certificates: usize,
    /// The leaf's subject common name.
    pub common_name: Option<String>,
    /// The leaf's DNS subject alternative names (what clients check).
    pub dns_names: Vec<String>,
    /// When the leaf stops being valid.
    pub not_after: Option<SystemTime>,
}

/// Reads the chain at `path`; an error says why the file holds no certificate.
pub fn describe(path: &Path) -> Result<ChainInfo, String> {
    let chain = super::tls::read_certs(path)?;
    let mut info = ChainInfo {
        certificates: chain.len(),
        common_name: None,
        dns_names: Vec::new(),
        not_after: None,
    };
    let Some(leaf) = chain.first() else {
        return Ok(info);
    };
    let Ok((_, cert)) = X509Certificate::from_der(leaf.as_ref()) else {
        return Ok(info);
    };
    info.common_name = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_string);
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        info.dns_names = san
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                GeneralName::DNSName(name) => Some(name.to_string()),
                _ => None,
            })
            .collect();
    }
    info.not_after = u64::try_from(cert.validity().not_after.timestamp())
        .ok()
        .map(|secs| SystemTime::UNIX_EPOCH + Duration::from_secs(secs));
    Ok(info)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_certificate_file_is_described_and_junk_is_refused_without_a_panic() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut params =
            rcgen::CertificateParams::new(vec!["rtc.example".into(), "localhost".into()])
                .expect("params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "rtc.example");
        params.not_after = rcgen::date_time_ymd(2031, 5, 17);
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = params.self_signed(&key).expect("certificate");
        let path = dir.path().join("cert.pem");
        std::fs::write(&path, cert.pem()).expect("write");
        let info = describe(&path).expect("described");
        assert_eq!(info.certificates, 1);
        assert_eq!(info.common_name.as_deref(), Some("rtc.example"));
        assert_eq!(info.dns_names, ["rtc.example", "localhost"]);
        // 2031-05-17T00:00:00Z.
        let expected = SystemTime::UNIX_EPOCH + Duration::from_secs(1_936_742_400);
        assert_eq!(info.not_after, Some(expected));

        let junk = dir.path().join("junk.pem");
        std::fs::write(
            &junk,
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        )
        .expect("write");
        if let Ok(info) = describe(&junk) {
            assert_eq!((info.common_name, info.not_after), (None, None));
        }
        std::fs::write(&junk, "not a certificate").expect("write");
        assert!(describe(&junk).is_err());
    }
}
