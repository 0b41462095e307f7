//! rustls client configuration for a destination: the broker's CA, an optional client certificate
//! for mutual TLS, and an optional name to verify instead of the broker host.
//!
//! The crypto provider is `ring`, chosen explicitly (no process-wide default is installed) so
//! the agent never depends on which provider another crate enabled.

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
    #[error("cannot read {what} {path}: {reason}")]
    Read {
        what: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("{what} {path} contains no {expected}")]
    Empty {
        what: &'static str,
        path: PathBuf,
        expected: &'static str,
    },
    #[error("CA file {path}: {reason}")]
    BadCa { path: PathBuf, reason: String },
    #[error("client_cert and client_key must be given together (got only {0})")]
    HalfClientAuth(&'static str),
    #[error("server_name {0:?} is not a valid DNS name or IP address")]
    BadServerName(String),
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read_certs(what: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let err = |e: &dyn std::fmt::Display| TlsError::Read {
        what,
        path: path.to_owned(),
        reason: e.to_string(),
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
pub fn client_config(tls: &TlsSettings, host: &str) -> Result<Arc<ClientConfig>, TlsError> {
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
            let key = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::Read {
                what: "client key",
                path: key.clone(),
                reason: e.to_string(),
            })?;
            builder.with_client_auth_cert(chain, key)?
        }
        (None, None) => builder.with_no_client_auth(),
        (Some(_), None) => return Err(TlsError::HalfClientAuth("client_cert")),
        (None, Some(_)) => return Err(TlsError::HalfClientAuth("client_key")),
    };
    Ok(Arc::new(config))
}

/// Full WebPKI verification (chain, validity, signatures) against a configured name rather than
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

    /// A self-signed CA certificate in PEM, made with rcgen (a dev-dependency).
    fn rcgen_ca() -> String {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.self_signed(&key).expect("self-signed").pem()
    }
}
