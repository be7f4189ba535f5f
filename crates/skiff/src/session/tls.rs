//! TLS 1.3 with rustls: the server's self-signed identity and the client's
//! configuration.
//!
//! The client does not validate the certificate against any authority:
//! the mutual HMAC proofs, bound to the certificate's hash, authenticate the
//! server; on top, the client pins each server's certificate on first use
//! (see [`crate::client::known_servers`]). The TLS handshake signature is
//! still verified, so only the holder of the certificate's private key can
//! complete it.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

use crate::auth::handshake::{channel_binding, Block};
use crate::keys;

/// The crypto provider: ring, TLS 1.3 suites with AES-128-GCM first (fast
/// with AES-NI, and the bulk of our traffic is large transfers).
pub fn provider() -> Arc<CryptoProvider> {
    use rustls::crypto::ring::cipher_suite as cs;
    let mut p = rustls::crypto::ring::default_provider();
    p.cipher_suites = vec![
        cs::TLS13_AES_128_GCM_SHA256,
        cs::TLS13_AES_256_GCM_SHA384,
        cs::TLS13_CHACHA20_POLY1305_SHA256,
    ];
    Arc::new(p)
}

/// The server's certificate and key, kept in its state directory.
pub struct ServerIdentity {
    cert: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
}

impl ServerIdentity {
    /// Loads `cert.pem` and `key.pem` from `state_dir`, creating them (mode
    /// 0600) on first start.
    pub fn load_or_create(state_dir: &Path) -> anyhow::Result<(ServerIdentity, bool)> {
        let cert_path = state_dir.join("cert.pem");
        let key_path = state_dir.join("key.pem");
        if key_path.exists() {
            return Ok((Self::load(&cert_path, &key_path)?, false));
        }
        let certified =
            rcgen::generate_simple_self_signed(vec!["localhost".to_string(), "skiff".to_string()])
                .context("generating the server certificate")?;
        keys::write_private_new(&key_path, &certified.key_pair.serialize_pem())?;
        keys::write_private_new(&cert_path, &certified.cert.pem())?;
        Ok((Self::load(&cert_path, &key_path)?, true))
    }

    fn load(cert_path: &Path, key_path: &Path) -> anyhow::Result<ServerIdentity> {
        keys::check_private(key_path)?;
        let read =
            |p: &PathBuf| std::fs::read(p).with_context(|| format!("reading {}", p.display()));
        let cert_pem = read(&cert_path.to_path_buf())?;
        let key_pem = read(&key_path.to_path_buf())?;
        let cert = rustls_pemfile::certs(&mut cert_pem.as_slice())
            .next()
            .with_context(|| format!("{} holds no certificate", cert_path.display()))?
            .with_context(|| format!("{} is not a PEM certificate", cert_path.display()))?;
        let key = rustls_pemfile::private_key(&mut key_pem.as_slice())
            .with_context(|| format!("{} is not a PEM private key", key_path.display()))?
            .with_context(|| format!("{} holds no private key", key_path.display()))?;
        let mode = std::fs::metadata(cert_path)?.permissions().mode();
        if mode & 0o022 != 0 {
            bail!(
                "{} is writable by others; run `chmod 600 {}`",
                cert_path.display(),
                cert_path.display()
            );
        }
        Ok(ServerIdentity { cert, key })
    }

    /// The channel binding clients will compute for this certificate.
    pub fn binding(&self) -> Block {
        channel_binding(&self.cert)
    }

    /// `SHA256:` and the hex of the certificate's SHA-256, as printed at start.
    pub fn fingerprint(&self) -> String {
        fingerprint(&self.cert)
    }

    /// A TLS 1.3-only acceptor for this identity.
    pub fn acceptor(&self) -> anyhow::Result<tokio_rustls::TlsAcceptor> {
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_no_client_auth()
            .with_single_cert(vec![self.cert.clone()], self.key.clone_key())?;
        config.max_fragment_size = None;
        config.send_tls13_tickets = 0;
        Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
    }
}

/// `SHA256:<hex>` of a certificate.
pub fn fingerprint(cert_der: &[u8]) -> String {
    format!("SHA256:{}", hex::encode(channel_binding(cert_der)))
}

/// The client's TLS configuration (TLS 1.3 only).
pub fn connector() -> anyhow::Result<tokio_rustls::TlsConnector> {
    let provider = provider();
    let verifier = Arc::new(HandshakeOnlyVerifier {
        algorithms: provider.signature_verification_algorithms,
    });
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

/// The SNI name to send for `host` (any string works: we do not check it).
pub fn server_name(host: &str) -> ServerName<'static> {
    ServerName::try_from(host.to_string())
        .unwrap_or_else(|_| ServerName::try_from("skiff").expect("static name is valid"))
}

/// Accepts any certificate (identity comes from the HMAC proofs bound to
/// it) but verifies the TLS handshake signature with it.
#[derive(Debug)]
struct HandshakeOnlyVerifier {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for HandshakeOnlyVerifier {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}
