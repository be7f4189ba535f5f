//! TLS 1.3 with rustls: the server's self-signed identity and the client's
//! configuration.
//!
//! The client does not validate the certificate against any authority:
//! the mutual HMAC proofs, bound to the certificate's hash, authenticate the
//! server; on top, the client pins each server's certificate on first use
//! (see `client::known_servers`). The TLS handshake signature is
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

/// The crypto provider: ring, TLS 1.3 suites in the order that is fastest
/// on this CPU — AES-128-GCM first when it has AES instructions (the bulk
/// of our traffic is large transfers), ChaCha20-Poly1305 first otherwise.
/// The server imposes this order on every client (see [`ServerIdentity::acceptor`]).
pub fn provider() -> Arc<CryptoProvider> {
    use rustls::crypto::ring::cipher_suite as cs;
    let mut p = rustls::crypto::ring::default_provider();
    p.cipher_suites = if cpu_has_aes() {
        vec![
            cs::TLS13_AES_128_GCM_SHA256,
            cs::TLS13_AES_256_GCM_SHA384,
            cs::TLS13_CHACHA20_POLY1305_SHA256,
        ]
    } else {
        vec![
            cs::TLS13_CHACHA20_POLY1305_SHA256,
            cs::TLS13_AES_128_GCM_SHA256,
            cs::TLS13_AES_256_GCM_SHA384,
        ]
    };
    Arc::new(p)
}

/// Whether the CPU has hardware AES (and carry-less multiply, which GCM
/// needs to be fast).
fn cpu_has_aes() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("aes")
            && std::arch::is_x86_feature_detected!("pclmulqdq")
    }
    #[cfg(target_arch = "aarch64")]
    {
        std::arch::is_aarch64_feature_detected!("aes")
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        false
    }
}

/// How long a new server certificate is valid: ten years, starting a day
/// before its creation so that a client whose clock is a little behind
/// still accepts it.
const CERT_VALID_DAYS: i64 = 3650;

/// Below this many days of validity left, `skiff serve` warns at start.
pub const CERT_WARN_DAYS: i64 = 365;

/// A new self-signed certificate and its key, valid from a day ago for
/// [`CERT_VALID_DAYS`].
fn new_certificate() -> anyhow::Result<(String, String)> {
    let mut params =
        rcgen::CertificateParams::new(vec!["localhost".to_string(), "skiff".to_string()])
            .context("building the server certificate's parameters")?;
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::days(1);
    params.not_after = now + time::Duration::days(CERT_VALID_DAYS);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "skiff server");
    let key = rcgen::KeyPair::generate().context("generating the server key")?;
    let cert = params
        .self_signed(&key)
        .context("signing the server certificate")?;
    Ok((cert.pem(), key.serialize_pem()))
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
        let (cert_pem, key_pem) = new_certificate()?;
        keys::write_private_new(&key_path, &key_pem)?;
        keys::write_private_new(&cert_path, &cert_pem)?;
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

    /// Days until the certificate expires (negative once it has), read
    /// from the certificate itself so that a certificate made by an older
    /// version or by hand is judged by what it says.
    pub fn days_left(&self) -> anyhow::Result<i64> {
        let (_, cert) = x509_parser::parse_x509_certificate(&self.cert)
            .map_err(|e| anyhow::anyhow!("the server certificate does not parse: {e}"))?;
        let not_after = cert.validity().not_after.timestamp();
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        Ok((not_after - now).div_euclid(86_400))
    }

    /// A TLS 1.3-only acceptor for this identity. It picks the cipher by
    /// its own order, not the client's: a client that lists ChaCha20
    /// first still gets AES-GCM on a CPU where that is faster.
    pub fn acceptor(&self) -> anyhow::Result<tokio_rustls::TlsAcceptor> {
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_no_client_auth()
            .with_single_cert(vec![self.cert.clone()], self.key.clone_key())?;
        config.ignore_client_order = true;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn fresh_identity() -> (tempfile::TempDir, ServerIdentity) {
        let dir = tempfile::tempdir().expect("temp dir");
        let (identity, created) = ServerIdentity::load_or_create(dir.path()).expect("identity");
        assert!(created);
        (dir, identity)
    }

    #[test]
    fn new_certificates_start_a_day_early_and_last_ten_years() {
        let (_dir, identity) = fresh_identity();
        let days = identity.days_left().expect("validity");
        assert!(
            (CERT_VALID_DAYS - 1..=CERT_VALID_DAYS).contains(&days),
            "{days}"
        );
        let (_, cert) = x509_parser::parse_x509_certificate(&identity.cert).expect("parses");
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let before = cert.validity().not_before.timestamp();
        assert!(
            now - before >= 86_400 - 60,
            "not_before is {}s ago",
            now - before
        );
    }

    #[tokio::test]
    async fn the_server_order_wins_over_a_client_preferring_chacha20() {
        use rustls::crypto::ring::cipher_suite as cs;
        let (_dir, identity) = fresh_identity();
        let acceptor = identity.acceptor().expect("acceptor");
        let mut client_provider = rustls::crypto::ring::default_provider();
        client_provider.cipher_suites = vec![
            cs::TLS13_CHACHA20_POLY1305_SHA256,
            cs::TLS13_AES_256_GCM_SHA384,
            cs::TLS13_AES_128_GCM_SHA256,
        ];
        let verifier = Arc::new(HandshakeOnlyVerifier {
            algorithms: client_provider.signature_verification_algorithms,
        });
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(client_provider))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("TLS 1.3")
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let (a, b) = tokio::io::duplex(64 * 1024);
        let server = tokio::spawn(async move { acceptor.accept(b).await });
        let client = connector
            .connect(server_name("localhost"), a)
            .await
            .expect("client handshake");
        server.await.expect("join").expect("server handshake");
        let negotiated = client
            .get_ref()
            .1
            .negotiated_cipher_suite()
            .expect("a suite")
            .suite();
        let expected = provider().cipher_suites[0].suite();
        assert_eq!(negotiated, expected);
        if cpu_has_aes() {
            assert_eq!(negotiated, rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
        }
    }
}
