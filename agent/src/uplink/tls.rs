//! rustls client configuration for a destination: the broker's CA, an optional client certificate
//! for mutual TLS, and an optional name to verify instead of the broker host.
//!
//! The crypto provider is `ring`, chosen explicitly (no process-wide default is installed) so
//! the agent never depends on which provider another crate enabled.
//!
//! [`check`] is what config validation calls (for `check` and `run` alike): it builds the
//! client config with the same [`client_config`] the uplink uses, and adds what rustls leaves to
//! the broker: certificate validity dates at the given time. Each problem names the settings
//! key it is about, so the operator fixes the right file.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::config::TlsSettings;

/// Why a destination's TLS settings could not be turned into a client config. Each variant names
/// the file, so an operator can fix the right one.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read or is not PEM. Check the path and its permissions.
    #[error("cannot read {what} {path}: {reason}")]
    Read {
        what: &'static str,
        path: PathBuf,
        reason: String,
    },
    /// A file holds no PEM block of the expected kind.
    #[error("{what} {path} contains no {expected}")]
    Empty {
        what: &'static str,
        path: PathBuf,
        expected: &'static str,
    },
    /// A CA certificate is not one rustls can trust (malformed, unsupported).
    #[error("CA file {path}: {reason}")]
    BadCa { path: PathBuf, reason: String },
    /// Only one of `client_cert`, `client_key` is set.
    #[error("client_cert and client_key must be given together (got only {0})")]
    HalfClientAuth(&'static str),
    /// `server_name` is neither a DNS name nor an IP address.
    #[error("server_name {0:?} is not a valid DNS name or IP address")]
    BadServerName(String),
    /// The client certificate is not X.509 v3, which TLS 1.2/1.3 peers and rustls require.
    #[error("client certificate {path} is an X.509 v{version} certificate; TLS needs v3")]
    ClientCertVersion { path: PathBuf, version: u8 },
    /// The client key is not the private key of the client certificate.
    #[error("client key {key} does not belong to the client certificate {cert}")]
    KeyMismatch { cert: PathBuf, key: PathBuf },
    /// rustls refused the client certificate or key for another reason.
    #[error("client certificate {path} or its key cannot be used: {reason}")]
    ClientCert { path: PathBuf, reason: String },
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

impl TlsError {
    /// The `broker.tls` key the problem is about (`""` for the table itself).
    pub(crate) fn key(&self) -> &'static str {
        match self {
            TlsError::Read { what, .. } | TlsError::Empty { what, .. } => key_of(what),
            TlsError::BadCa { .. } | TlsError::Rustls(_) => "ca",
            TlsError::HalfClientAuth(_) => "",
            TlsError::BadServerName(_) => "server_name",
            TlsError::ClientCertVersion { .. } | TlsError::ClientCert { .. } => "client_cert",
            TlsError::KeyMismatch { .. } => "client_key",
        }
    }

    /// What to do about it.
    pub(crate) fn hint(&self) -> &'static str {
        match self {
            TlsError::Read { .. } => "check the path, and that the agent's user may read the file",
            TlsError::Empty { what: "client key", .. } => {
                "the file must hold the PEM private key (-----BEGIN PRIVATE KEY-----)"
            }
            TlsError::Empty { .. } => {
                "the file must hold PEM certificates (-----BEGIN CERTIFICATE-----)"
            }
            TlsError::BadCa { .. } | TlsError::Rustls(_) => {
                "use the PEM certificate of the CA that signed the broker's certificate"
            }
            TlsError::HalfClientAuth(_) => "set both client_cert and client_key, or neither",
            TlsError::BadServerName(_) => "the name in the broker's certificate, e.g. \"mqtt.example.cn\"",
            TlsError::ClientCertVersion { .. } => {
                "have the certificate re-issued as v3 (with extensions); `openssl x509 -req` makes v1 unless given -extfile"
            }
            TlsError::KeyMismatch { .. } => {
                "client_key must be the private key the client certificate was issued for"
            }
            TlsError::ClientCert { .. } => {
                "use a PEM client certificate chain (leaf first) and its PEM private key"
            }
        }
    }
}

fn key_of(what: &str) -> &'static str {
    match what {
        "client certificate" => "client_cert",
        "client key" => "client_key",
        _ => "ca",
    }
}

/// One problem with a destination's TLS files, for config validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TlsProblem {
    /// Key under `broker.tls` (`ca`, `client_cert`, `client_key`, `server_name`; empty for the
    /// table itself).
    pub(crate) key: &'static str,
    pub(crate) message: String,
    pub(crate) hint: &'static str,
}

/// Every problem `run` would have with these TLS settings, and certificates outside their
/// validity at `now_ms`. Reads the files; changes nothing.
pub(crate) fn check(tls: &TlsSettings, host: &str, now_ms: i64) -> Vec<TlsProblem> {
    let mut problems = Vec::new();
    match client_config(tls, host) {
        Ok(_) | Err(TlsError::HalfClientAuth(_)) => {} // reported by destination validation
        Err(e) => problems.push(TlsProblem {
            key: e.key(),
            message: e.to_string(),
            hint: e.hint(),
        }),
    }
    let files = [
        ("ca", "CA certificate", Some(&tls.ca)),
        (
            "client_cert",
            "client certificate",
            tls.client_cert.as_ref(),
        ),
    ];
    for (key, what, path) in files {
        let Some(path) = path else { continue };
        if problems.iter().any(|p| p.key == key) {
            continue;
        }
        let Ok(certs) = read_certs(what, path) else {
            continue;
        };
        for cert in &certs {
            let Some(facts) = CertFacts::parse(cert) else {
                continue;
            };
            if let Some(message) = facts.validity_problem(now_ms) {
                problems.push(TlsProblem {
                    key,
                    message: format!("{what} {} {message}", path.display()),
                    hint: "install a currently valid certificate (and check the gateway's clock)",
                });
                break;
            }
        }
    }
    problems
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A PEM reading error in an operator's words (no errno structs, no byte dumps).
fn pem_reason(e: &rustls::pki_types::pem::Error) -> String {
    use rustls::pki_types::pem::Error as E;
    match e {
        E::Io(io) => match io.kind() {
            std::io::ErrorKind::NotFound => "no such file".to_owned(),
            std::io::ErrorKind::PermissionDenied => "permission denied".to_owned(),
            _ => io.to_string(),
        },
        E::MissingSectionEnd { .. } => "a PEM block has no END line".to_owned(),
        E::IllegalSectionStart { .. } => "a PEM BEGIN line is malformed".to_owned(),
        E::Base64Decode(_) => "a PEM block is not valid base64".to_owned(),
        other => other.to_string(),
    }
}

fn read_certs(what: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let err = |e: &rustls::pki_types::pem::Error| TlsError::Read {
        what,
        path: path.to_owned(),
        reason: pem_reason(e),
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| err(&e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(&e))?;
    if certs.is_empty() {
        return Err(TlsError::Empty {
            what,
            path: path.to_owned(),
            expected: "PEM certificate",
        });
    }
    Ok(certs)
}

/// Build the client config for `tls`. `host` is the broker host the connection will use; when
/// `server_name` differs from it, the certificate is verified against `server_name`.
pub(crate) fn client_config(tls: &TlsSettings, host: &str) -> Result<Arc<ClientConfig>, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in read_certs("CA file", &tls.ca)? {
        roots.add(cert).map_err(|e| TlsError::BadCa {
            path: tls.ca.clone(),
            reason: e.to_string(),
        })?;
    }
    let roots = Arc::new(roots);
    let builder =
        ClientConfig::builder_with_provider(provider()).with_safe_default_protocol_versions()?;
    let builder = match tls.server_name.as_deref().filter(|n| *n != host) {
        None => builder.with_root_certificates(roots),
        Some(name) => {
            let expected = ServerName::try_from(name.to_owned())
                .map_err(|_| TlsError::BadServerName(name.to_owned()))?;
            let inner = WebPkiServerVerifier::builder_with_provider(roots, provider())
                .build()
                .map_err(|e| TlsError::BadCa {
                    path: tls.ca.clone(),
                    reason: e.to_string(),
                })?;
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(NamedVerifier { inner, expected }))
        }
    };
    let config = match (&tls.client_cert, &tls.client_key) {
        (Some(cert), Some(key)) => {
            let chain = read_certs("client certificate", cert)?;
            if let Some(version) = chain
                .first()
                .and_then(CertFacts::parse)
                .map(|f| f.version)
                .filter(|v| *v != 3)
            {
                return Err(TlsError::ClientCertVersion {
                    path: cert.clone(),
                    version,
                });
            }
            let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| match e {
                rustls::pki_types::pem::Error::NoItemsFound => TlsError::Empty {
                    what: "client key",
                    path: key.clone(),
                    expected: "PEM private key",
                },
                e => TlsError::Read {
                    what: "client key",
                    path: key.clone(),
                    reason: pem_reason(&e),
                },
            })?;
            // rustls words these as about the *peer* certificate; here it is our own.
            builder
                .with_client_auth_cert(chain, key_der)
                .map_err(|e| match e {
                    rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch) => {
                        TlsError::KeyMismatch {
                            cert: cert.clone(),
                            key: key.clone(),
                        }
                    }
                    other => TlsError::ClientCert {
                        path: cert.clone(),
                        reason: match other {
                            rustls::Error::InvalidCertificate(c) => format!("{c:?}"),
                            o => o.to_string(),
                        },
                    },
                })?
        }
        (None, None) => builder.with_no_client_auth(),
        (Some(_), None) => return Err(TlsError::HalfClientAuth("client_cert")),
        (None, Some(_)) => return Err(TlsError::HalfClientAuth("client_key")),
    };
    Ok(Arc::new(config))
}

/// What config validation needs from a certificate and rustls does not check on our side: the
/// X.509 version and the validity period. A minimal DER walk over the `TBSCertificate` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct CertFacts {
    version: u8,
    not_before_ms: i64,
    not_after_ms: i64,
}

impl CertFacts {
    fn parse(der: &CertificateDer<'_>) -> Option<Self> {
        let (_, cert, _) = der_tlv(der.as_ref(), 0x30)?;
        let (_, tbs, _) = der_tlv(cert, 0x30)?;
        let mut rest = tbs;
        let mut version = 1;
        if rest.first() == Some(&0xa0) {
            let (_, explicit, after) = der_tlv(rest, 0xa0)?;
            let (_, v, _) = der_tlv(explicit, 0x02)?;
            version = v.last().copied()?.checked_add(1)?;
            rest = after;
        }
        let (_, _serial, rest) = der_tlv(rest, 0x02)?;
        let (_, _sig_alg, rest) = der_tlv(rest, 0x30)?;
        let (_, _issuer, rest) = der_tlv(rest, 0x30)?;
        let (_, validity, _) = der_tlv(rest, 0x30)?;
        let (t1, nb, rest) = der_any(validity)?;
        let (t2, na, _) = der_any(rest)?;
        Some(Self {
            version,
            not_before_ms: der_time_ms(t1, nb)?,
            not_after_ms: der_time_ms(t2, na)?,
        })
    }

    fn validity_problem(&self, now_ms: i64) -> Option<String> {
        let day = |ms: i64| {
            let days = ms.div_euclid(86_400_000);
            civil_from_days(days)
        };
        if now_ms > self.not_after_ms {
            let (y, m, d) = day(self.not_after_ms);
            return Some(format!("expired on {y:04}-{m:02}-{d:02}"));
        }
        if now_ms < self.not_before_ms {
            let (y, m, d) = day(self.not_before_ms);
            return Some(format!("is not valid before {y:04}-{m:02}-{d:02}"));
        }
        None
    }
}

/// One DER element with tag `tag`: (tag, content, rest).
fn der_tlv(buf: &[u8], tag: u8) -> Option<(u8, &[u8], &[u8])> {
    let (t, content, rest) = der_any(buf)?;
    (t == tag).then_some((t, content, rest))
}

fn der_any(buf: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = buf.split_first()?;
    let (&first, mut rest) = rest.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |a, b| (a << 8) | usize::from(*b));
        rest = &rest[n..];
        len
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

/// `UTCTime` (`YYMMDDHHMMSSZ`, years 1950-2049) or `GeneralizedTime` (`YYYYMMDDHHMMSSZ`) in ms.
fn der_time_ms(tag: u8, s: &[u8]) -> Option<i64> {
    let s = std::str::from_utf8(s).ok()?.strip_suffix('Z')?;
    let num = |r: &str| r.parse::<i64>().ok();
    let (year, rest) = match tag {
        0x17 if s.len() == 12 => {
            let yy = num(&s[..2])?;
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, &s[2..])
        }
        0x18 if s.len() == 14 => (num(&s[..4])?, &s[4..]),
        _ => return None,
    };
    let month = u32::try_from(num(&rest[0..2])?).ok()?;
    let day = u32::try_from(num(&rest[2..4])?).ok()?;
    let secs = num(&rest[4..6])? * 3600 + num(&rest[6..8])? * 60 + num(&rest[8..10])?;
    let days = crate::config::issues::days_from_civil(year, month, day);
    Some((days * 86_400 + secs) * 1000)
}

/// Inverse of `days_from_civil` (Howard Hinnant's algorithm).
#[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)] // day 1..=31 and month 1..=12 by construction
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// Full `WebPKI` verification (chain, validity, signatures) against a configured name rather than
/// the host dialled: for brokers reached by IP whose certificate names only a DNS name. Nothing
/// is skipped; only the name compared changes.
#[derive(Debug)]
struct NamedVerifier {
    inner: Arc<WebPkiServerVerifier>,
    expected: ServerName<'static>,
}

impl ServerCertVerifier for NamedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _dialled: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.inner.verify_server_cert(
            end_entity,
            intermediates,
            &self.expected,
            ocsp_response,
            now,
        )
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(dir: &Path) -> TlsSettings {
        TlsSettings {
            ca: dir.join("ca.pem"),
            client_cert: None,
            client_key: None,
            server_name: None,
        }
    }

    #[test]
    fn missing_ca_file_names_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = client_config(&settings(dir.path()), "127.0.0.1").expect_err("no CA");
        let msg = err.to_string();
        assert!(msg.contains("CA file") && msg.contains("ca.pem"), "{msg}");
    }

    #[test]
    fn ca_file_without_certificates_is_rejected() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("ca.pem"), "not a certificate\n").expect("write");
        let err = client_config(&settings(dir.path()), "127.0.0.1").expect_err("empty");
        assert!(err.to_string().contains("no PEM certificate"), "{err}");
    }

    #[test]
    fn half_client_auth_is_rejected() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = rcgen_ca();
        std::fs::write(dir.path().join("ca.pem"), ca).expect("write");
        let mut s = settings(dir.path());
        s.client_cert = Some(dir.path().join("client.pem"));
        let err = client_config(&s, "127.0.0.1").expect_err("half");
        assert!(err.to_string().contains("together"), "{err}");
    }

    #[test]
    fn valid_ca_builds_a_config_with_and_without_server_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("ca.pem"), rcgen_ca()).expect("write");
        let mut s = settings(dir.path());
        client_config(&s, "127.0.0.1").expect("plain");
        s.server_name = Some("broker.example".into());
        client_config(&s, "127.0.0.1").expect("named");
        s.server_name = Some("not a name!".into());
        assert!(matches!(
            client_config(&s, "127.0.0.1"),
            Err(TlsError::BadServerName(_))
        ));
    }

    /// 2026-01-01T00:00:00Z.
    const NOW: i64 = 1_767_225_600_000;

    /// A self-signed leaf certificate and its key, valid from `from` to `until` (years).
    fn leaf(from: i32, until: i32) -> (String, String) {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(vec!["gw-01".to_owned()]).expect("params");
        params.not_before = rcgen::date_time_ymd(from, 1, 1);
        params.not_after = rcgen::date_time_ymd(until, 1, 1);
        let cert = params.self_signed(&key).expect("self-signed");
        (cert.pem(), key.serialize_pem())
    }

    /// A directory with a valid CA and the given client certificate and key.
    fn with_client(cert: &str, key: &str) -> (tempfile::TempDir, TlsSettings) {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("ca.pem"), rcgen_ca()).expect("write");
        std::fs::write(dir.path().join("client.pem"), cert).expect("write");
        std::fs::write(dir.path().join("client.key"), key).expect("write");
        let mut s = settings(dir.path());
        s.client_cert = Some(dir.path().join("client.pem"));
        s.client_key = Some(dir.path().join("client.key"));
        (dir, s)
    }

    fn fixture(name: &str) -> String {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/tls")
            .join(name);
        std::fs::read_to_string(&path).expect("fixture")
    }

    #[test]
    fn a_valid_client_pair_passes_the_check() {
        let (cert, key) = leaf(2020, 2100);
        let (_dir, s) = with_client(&cert, &key);
        assert_eq!(check(&s, "127.0.0.1", NOW), Vec::new());
    }

    #[test]
    fn a_v1_client_certificate_is_named_as_ours_not_the_peers() {
        let (_dir, s) = with_client(&fixture("v1-client.pem"), &fixture("v1-client.key"));
        let err = client_config(&s, "127.0.0.1").expect_err("v1");
        let msg = err.to_string();
        assert!(msg.starts_with("client certificate "), "{msg}");
        assert!(msg.contains("X.509 v1") && !msg.contains("peer"), "{msg}");
        let p = check(&s, "127.0.0.1", NOW);
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!(p[0].key, "client_cert");
        assert!(p[0].hint.contains("v3"), "{p:?}");
    }

    #[test]
    fn a_key_of_another_certificate_is_reported_on_client_key() {
        let (cert, _) = leaf(2020, 2100);
        let (_, other_key) = leaf(2020, 2100);
        let (_dir, s) = with_client(&cert, &other_key);
        let p = check(&s, "127.0.0.1", NOW);
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!(p[0].key, "client_key");
        assert!(
            p[0].message
                .contains("does not belong to the client certificate"),
            "{p:?}"
        );
    }

    #[test]
    fn expired_and_not_yet_valid_client_certificates_are_reported_with_the_date() {
        let (cert, key) = leaf(2020, 2025);
        let (_dir, s) = with_client(&cert, &key);
        let p = check(&s, "127.0.0.1", NOW);
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!(p[0].key, "client_cert");
        assert!(p[0].message.ends_with("expired on 2025-01-01"), "{p:?}");
        let (cert, key) = leaf(2030, 2040);
        let (_dir, s) = with_client(&cert, &key);
        let p = check(&s, "127.0.0.1", NOW);
        assert!(
            p[0].message.ends_with("is not valid before 2030-01-01"),
            "{p:?}"
        );
    }

    #[test]
    fn a_ca_file_of_garbage_is_reported_on_ca() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            dir.path().join("ca.pem"),
            "-----BEGIN CERTIFICATE-----\nAAAAAAAA\n-----END CERTIFICATE-----\n",
        )
        .expect("write");
        let p = check(&settings(dir.path()), "127.0.0.1", NOW);
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!(p[0].key, "ca");
        std::fs::write(dir.path().join("ca.pem"), "just text\n").expect("write");
        let p = check(&settings(dir.path()), "127.0.0.1", NOW);
        assert_eq!((p.len(), p[0].key), (1, "ca"), "{p:?}");
        assert!(p[0].message.contains("no PEM certificate"), "{p:?}");
    }

    #[test]
    fn missing_files_and_a_key_file_without_a_key_read_plainly() {
        let (cert, _) = leaf(2020, 2100);
        let (dir, mut s) = with_client(&cert, &cert);
        let p = check(&s, "127.0.0.1", NOW);
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!(p[0].key, "client_key");
        assert!(
            p[0].message.ends_with("contains no PEM private key"),
            "{p:?}"
        );
        s.ca = dir.path().join("absent.pem");
        let p = check(&s, "127.0.0.1", NOW);
        assert_eq!(p[0].key, "ca");
        assert!(p[0].message.ends_with("absent.pem: no such file"), "{p:?}");
    }

    #[test]
    fn der_times_and_days_round_trip() {
        assert_eq!(der_time_ms(0x17, b"260101000000Z"), Some(NOW));
        assert_eq!(der_time_ms(0x18, b"20260101000000Z"), Some(NOW));
        assert_eq!(civil_from_days(NOW / 86_400_000), (2026, 1, 1));
        assert_eq!(der_time_ms(0x17, b"2601010000Z"), None);
    }

    /// A self-signed CA certificate in PEM, made with rcgen (a dev-dependency).
    fn rcgen_ca() -> String {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.self_signed(&key).expect("self-signed").pem()
    }
}
