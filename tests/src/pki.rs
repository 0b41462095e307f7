//! A throw-away PKI for TLS tests: one CA, a server certificate, a client certificate.
//!
//! Invariants:
//! - Generated fresh per call (ECDSA P-256, rcgen 0.14), never checked in, never reused across
//!   test runs.
//! - The server certificate is valid for `localhost` and `127.0.0.1` (DNS and IP SANs) because
//!   tests connect to `127.0.0.1` and some clients verify by name, others by IP.
//! - Leaf certificates carry the matching extended key usage (serverAuth / clientAuth): OpenSSL
//!   (mosquitto) and webpki (rustls) both check purpose when the extension is present.
//! - Validity is 2020-01-01 to 2099-12-31 (far from "now" on either side, so a skewed CI clock
//!   does not matter; no dates past 2099 that older parsers dislike).
//! - PEM keys are PKCS#8, which both OpenSSL and rustls read.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{anyhow, Context};
use rcgen::{
    date_time_ymd, BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// PEM texts of a generated test PKI.
#[derive(Clone)]
pub struct TestPki {
    /// The CA certificate that signed both leaves (trust anchor for both sides).
    pub ca_pem: String,
    /// Server certificate for `localhost` / `127.0.0.1`.
    pub server_cert_pem: String,
    /// The server certificate's private key (PKCS#8).
    pub server_key_pem: String,
    /// Client certificate (CN `edge-agent-test`).
    pub client_cert_pem: String,
    /// The client certificate's private key (PKCS#8).
    pub client_key_pem: String,
}

// Hand-written so private keys never end up in test output.
impl std::fmt::Debug for TestPki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestPki")
            .field("ca_pem", &self.ca_pem.len())
            .field("server_cert_pem", &self.server_cert_pem.len())
            .field("server_key_pem", &"<redacted>")
            .field("client_cert_pem", &self.client_cert_pem.len())
            .field("client_key_pem", &"<redacted>")
            .finish()
    }
}

/// Where [`TestPki::write_to`] put each file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PkiPaths {
    /// `ca.pem`
    pub ca: PathBuf,
    /// `server.pem`
    pub server_cert: PathBuf,
    /// `server.key`
    pub server_key: PathBuf,
    /// `client.pem`
    pub client_cert: PathBuf,
    /// `client.key`
    pub client_key: PathBuf,
}

impl TestPki {
    /// Generates a CA and a server and a client certificate signed by it.
    pub fn generate() -> anyhow::Result<TestPki> {
        let ca_key = KeyPair::generate().context("generating the CA key")?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "edge-tests CA");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        set_validity(&mut ca_params);
        let ca_cert = ca_params
            .self_signed(&ca_key)
            .context("self-signing the CA")?;
        let ca = Issuer::new(ca_params, ca_key);

        let (server_cert_pem, server_key_pem) = leaf(
            &ca,
            "localhost",
            vec!["localhost".to_string(), "127.0.0.1".to_string()],
            ExtendedKeyUsagePurpose::ServerAuth,
        )
        .context("issuing the server certificate")?;
        let (client_cert_pem, client_key_pem) = leaf(
            &ca,
            "edge-agent-test",
            Vec::new(),
            ExtendedKeyUsagePurpose::ClientAuth,
        )
        .context("issuing the client certificate")?;

        Ok(TestPki {
            ca_pem: ca_cert.pem(),
            server_cert_pem,
            server_key_pem,
            client_cert_pem,
            client_key_pem,
        })
    }

    /// Writes the five PEM files into `dir` (which must exist) and returns their paths.
    pub fn write_to(&self, dir: &Path) -> anyhow::Result<PkiPaths> {
        let paths = PkiPaths {
            ca: dir.join("ca.pem"),
            server_cert: dir.join("server.pem"),
            server_key: dir.join("server.key"),
            client_cert: dir.join("client.pem"),
            client_key: dir.join("client.key"),
        };
        for (path, pem) in [
            (&paths.ca, &self.ca_pem),
            (&paths.server_cert, &self.server_cert_pem),
            (&paths.server_key, &self.server_key_pem),
            (&paths.client_cert, &self.client_cert_pem),
            (&paths.client_key, &self.client_key_pem),
        ] {
            fs::write(path, pem).with_context(|| format!("writing {}", path.display()))?;
        }
        Ok(paths)
    }

    /// A rustls client config (ring provider) trusting only this PKI's CA, presenting the client
    /// certificate when `with_client_cert` is true.
    pub fn rustls_client_config(
        &self,
        with_client_cert: bool,
    ) -> anyhow::Result<Arc<rustls::ClientConfig>> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(self.ca_pem.as_bytes()) {
            roots
                .add(cert.map_err(|error| anyhow!("parsing the CA PEM: {error:?}"))?)
                .context("adding the test CA to the root store")?;
        }
        let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .context("choosing TLS versions for the ring provider")?
        .with_root_certificates(roots);
        let config = if with_client_cert {
            let chain = CertificateDer::pem_slice_iter(self.client_cert_pem.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|error| anyhow!("parsing the client certificate PEM: {error:?}"))?;
            let key = PrivateKeyDer::from_pem_slice(self.client_key_pem.as_bytes())
                .map_err(|error| anyhow!("parsing the client key PEM: {error:?}"))?;
            builder
                .with_client_auth_cert(chain, key)
                .context("installing the client certificate")?
        } else {
            builder.with_no_client_auth()
        };
        Ok(Arc::new(config))
    }
}

fn set_validity(params: &mut CertificateParams) {
    params.not_before = date_time_ymd(2020, 1, 1);
    params.not_after = date_time_ymd(2099, 12, 31);
}

/// Issues a leaf certificate signed by `ca`; returns (certificate PEM, key PEM).
fn leaf(
    ca: &Issuer<'_, KeyPair>,
    common_name: &str,
    subject_alt_names: Vec<String>,
    usage: ExtendedKeyUsagePurpose,
) -> anyhow::Result<(String, String)> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(subject_alt_names)?;
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.use_authority_key_identifier_extension = true;
    // ECDSA keys only sign; keyEncipherment would be meaningless for them.
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![usage];
    set_validity(&mut params);
    let cert = params.signed_by(&key, ca)?;
    Ok((cert.pem(), key.serialize_pem()))
}
