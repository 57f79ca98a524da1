//! [`TlsConfig`], the TLS settings, and the rustls client configuration built
//! from them.
//!
//! Always the `ring` provider, TLS 1.2 or newer, ALPN `h2` (gRPC runs over
//! HTTP/2). Files are read with `std::fs` so that a missing file is reported
//! with its path and the setting that named it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::sign::{CertifiedKey, SingleCertAndKey};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::error::ConfigError;

/// TLS settings. rustls never negotiates below TLS 1.2.
///
/// ```
/// let tls = etcdutil::TlsConfig {
///     ca_file: Some("/etc/etcd/ca.pem".into()),
///     cert_file: Some("/etc/etcd/client.pem".into()),
///     key_file: Some("/etc/etcd/client-key.pem".into()),
///     skip_verify: false,
/// };
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsConfig {
    /// PEM CA certificates to verify etcd with; `None` uses the system roots.
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate, for etcd's `--client-cert-auth`.
    pub cert_file: Option<PathBuf>,
    /// PEM private key of `cert_file`.
    pub key_file: Option<PathBuf>,
    /// Accept any server certificate. For tests only.
    pub skip_verify: bool,
}

/// The names of the settings the TLS files came from, for error messages:
/// the `TlsConfig` field, or the environment variable that filled it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct FileNames {
    pub(crate) ca: &'static str,
    pub(crate) cert: &'static str,
    pub(crate) key: &'static str,
}

impl FileNames {
    /// All three files set by the caller.
    pub(crate) const FIELDS: FileNames = FileNames {
        ca: "TlsConfig.ca_file",
        cert: "TlsConfig.cert_file",
        key: "TlsConfig.key_file",
    };
}

/// The rustls config to connect with: the CA file's certificates (else the
/// system's roots) or no verification at all with `skip_verify`, and the
/// client certificate if one is set.
pub(crate) fn client_config(tls: &TlsConfig) -> Result<ClientConfig, ConfigError> {
    build(tls, &FileNames::FIELDS, true)
}

/// Reads and checks the files of `tls` by building its rustls config, short
/// of loading the system's roots (a connection reports their absence).
pub(crate) fn check(tls: &TlsConfig, names: &FileNames) -> Result<(), ConfigError> {
    build(tls, names, false).map(drop)
}

fn build(
    tls: &TlsConfig,
    names: &FileNames,
    system_roots: bool,
) -> Result<ClientConfig, ConfigError> {
    let client_files = match (&tls.cert_file, &tls.key_file) {
        (Some(cert), Some(key)) => Some((cert, key)),
        (Some(cert), None) => {
            return Err(ConfigError::CertWithoutKey {
                name: names.cert,
                path: cert.clone(),
            });
        }
        (None, Some(key)) => {
            return Err(ConfigError::KeyWithoutCert {
                name: names.key,
                path: key.clone(),
            });
        }
        (None, None) => None,
    };

    let mut roots = RootCertStore::empty();
    if let Some(path) = &tls.ca_file {
        for cert in read_certs(path, names.ca)? {
            roots
                .add(cert)
                .map_err(|source| ConfigError::InvalidCertificate {
                    name: names.ca,
                    path: path.clone(),
                    source: Arc::new(source),
                })?;
        }
    } else if system_roots && !tls.skip_verify {
        add_system_roots(&mut roots)?;
    }

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let client_key = client_files
        .map(|(cert, key)| certified_key(&provider, names, cert, key))
        .transpose()?;
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|source| ConfigError::TlsVersions {
            source: Arc::new(source),
        })?;
    let builder = match tls.skip_verify {
        true => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider))),
        false => builder.with_root_certificates(roots),
    };
    let mut config = match client_key {
        None => builder.with_no_client_auth(),
        Some(key) => builder.with_client_cert_resolver(Arc::new(SingleCertAndKey::from(key))),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// The client certificate chain and its private key, checked to belong together.
fn certified_key(
    provider: &CryptoProvider,
    names: &FileNames,
    cert_path: &Path,
    key_path: &Path,
) -> Result<CertifiedKey, ConfigError> {
    let chain = read_certs(cert_path, names.cert)?;
    let key = read_key(key_path, names.key)?;
    let key = provider
        .key_provider
        .load_private_key(key)
        .map_err(|source| ConfigError::UnsupportedKey {
            name: names.key,
            path: key_path.to_owned(),
            source: Arc::new(source),
        })?;
    let certified = CertifiedKey::new(chain, key);
    match certified.keys_match() {
        // Unknown: the key cannot tell its public half; the handshake will.
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {
            Ok(certified)
        }
        Err(rustls::Error::InconsistentKeys(_)) => Err(ConfigError::KeyMismatch {
            key_name: names.key,
            key_path: key_path.to_owned(),
            cert_name: names.cert,
        }),
        Err(source) => Err(ConfigError::InvalidCertificate {
            name: names.cert,
            path: cert_path.to_owned(),
            source: Arc::new(source),
        }),
    }
}

/// The system's root certificates (`rustls-native-certs`, which also honours
/// `SSL_CERT_FILE` and `SSL_CERT_DIR`). Some unreadable ones are only logged,
/// under the tracing target `etcdutil::tls` this module had before `client/`.
fn add_system_roots(roots: &mut RootCertStore) -> Result<(), ConfigError> {
    let native = rustls_native_certs::load_native_certs();
    for error in &native.errors {
        tracing::warn!(target: "etcdutil::tls", %error, "cannot load some of the system's root certificates");
    }
    let (added, ignored) = roots.add_parsable_certificates(native.certs);
    if ignored > 0 {
        tracing::warn!(target: "etcdutil::tls", ignored, "ignored unparsable system root certificates");
    }
    if added == 0 {
        let source = native
            .errors
            .into_iter()
            .next()
            .map(|error| Arc::new(error) as _);
        return Err(ConfigError::NoSystemRoots { source });
    }
    Ok(())
}

fn read(path: &Path, name: &'static str) -> Result<Vec<u8>, ConfigError> {
    std::fs::read(path).map_err(|source| ConfigError::ReadFile {
        name,
        path: path.to_owned(),
        source: Arc::new(source),
    })
}

fn invalid_pem(path: &Path, name: &'static str) -> impl FnOnce(pem::Error) -> ConfigError {
    let path: PathBuf = path.to_owned();
    move |source| ConfigError::InvalidPem {
        name,
        path,
        source: Arc::new(source),
    }
}

/// Every certificate of a PEM file; at least one.
fn read_certs(
    path: &Path,
    name: &'static str,
) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let pem = read(path, name)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(invalid_pem(path, name))?;
    if certs.is_empty() {
        return Err(ConfigError::NoCertificate {
            name,
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

/// The first private key (PKCS#8, PKCS#1 or SEC1) of a PEM file.
fn read_key(path: &Path, name: &'static str) -> Result<PrivateKeyDer<'static>, ConfigError> {
    let pem = read(path, name)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|error| match error {
        pem::Error::NoItemsFound => ConfigError::NoPrivateKey {
            name,
            path: path.to_owned(),
        },
        error => invalid_pem(path, name)(error),
    })
}

/// `skip_verify`: accepts any server certificate, but still checks that the
/// server holds its key (the handshake signatures), with the provider's algorithms.
#[derive(Debug)]
struct AcceptAnyCertificate(Arc<CryptoProvider>);

impl AcceptAnyCertificate {
    fn algorithms(&self) -> &WebPkiSupportedAlgorithms {
        &self.0.signature_verification_algorithms
    }
}

impl ServerCertVerifier for AcceptAnyCertificate {
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
        rustls::crypto::verify_tls12_signature(message, cert, dss, self.algorithms())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, self.algorithms())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms().supported_schemes()
    }
}

#[cfg(all(test, feature = "test-util"))]
mod tests {
    use rustls::ServerConfig;
    use rustls::server::WebPkiClientVerifier;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_rustls::{TlsAcceptor, TlsConnector};

    use super::*;
    use crate::testing::certs::TlsDir;

    /// The harness's PKI (`testing::certs`): a CA, a server certificate for
    /// `localhost` and a client certificate, in a temp dir; and a server
    /// config that requires a client certificate from that CA.
    struct Pki {
        _dir: TlsDir,
        server: Arc<ServerConfig>,
        ca: PathBuf,
        cert: PathBuf,
        key: PathBuf,
    }

    fn pki() -> Pki {
        let dir = TlsDir::generate("client").unwrap();
        let files = dir.files.clone();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut client_roots = RootCertStore::empty();
        client_roots
            .add(CertificateDer::from_pem_file(&files.ca_cert).unwrap())
            .unwrap();
        let client_verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::new(client_roots), provider.clone())
                .build()
                .unwrap();
        let mut server = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_client_cert_verifier(client_verifier)
            .with_single_cert(
                vec![CertificateDer::from_pem_file(&files.server_cert).unwrap()],
                PrivateKeyDer::from_pem_file(&files.server_key).unwrap(),
            )
            .unwrap();
        server.alpn_protocols = vec![b"h2".to_vec()];
        Pki {
            _dir: dir,
            server: Arc::new(server),
            ca: files.ca_cert,
            cert: files.client_cert,
            key: files.client_key,
        }
    }

    /// Connects `client` to `server` over an in-memory pipe; the negotiated ALPN.
    async fn handshake(
        client: ClientConfig,
        server: Arc<ServerConfig>,
    ) -> std::io::Result<Vec<u8>> {
        let (client_io, server_io) = tokio::io::duplex(64 * 1024);
        let _server = tokio::spawn(async move {
            let mut tls = TlsAcceptor::from(server).accept(server_io).await?;
            tls.write_all(b"ok").await?;
            tls.flush().await?;
            std::io::Result::Ok(tls)
        });
        let name = ServerName::try_from("localhost").unwrap();
        let mut tls = TlsConnector::from(Arc::new(client))
            .connect(name, client_io)
            .await?;
        let mut answer = [0; 2];
        tls.read_exact(&mut answer).await?;
        assert_eq!(&answer, b"ok");
        Ok(tls.get_ref().1.alpn_protocol().unwrap_or_default().to_vec())
    }

    #[tokio::test]
    async fn verified_against_the_ca_file_with_a_client_certificate() {
        let pki = pki();
        let tls = TlsConfig {
            ca_file: Some(pki.ca.clone()),
            cert_file: Some(pki.cert.clone()),
            key_file: Some(pki.key.clone()),
            skip_verify: false,
        };
        let alpn = handshake(client_config(&tls).unwrap(), pki.server.clone())
            .await
            .unwrap();
        assert_eq!(alpn, b"h2");
    }

    #[tokio::test]
    async fn skip_verify_accepts_an_unknown_issuer() {
        let pki = pki();
        let tls = TlsConfig {
            cert_file: Some(pki.cert.clone()),
            key_file: Some(pki.key.clone()),
            skip_verify: true,
            ..Default::default()
        };
        let alpn = handshake(client_config(&tls).unwrap(), pki.server.clone())
            .await
            .unwrap();
        assert_eq!(alpn, b"h2");
    }

    #[tokio::test]
    async fn unknown_issuer_is_refused_without_skip_verify() {
        let pki = pki();
        let tls = TlsConfig {
            cert_file: Some(pki.cert.clone()),
            key_file: Some(pki.key.clone()),
            ..Default::default()
        };
        // No CA file and no system roots: nothing to trust.
        let client = build(&tls, &FileNames::FIELDS, false).unwrap();
        let err = handshake(client, pki.server.clone()).await.unwrap_err();
        assert!(err.to_string().contains("UnknownIssuer"), "{err}");
    }

    #[tokio::test]
    async fn no_client_certificate_is_refused_by_a_server_requiring_one() {
        let pki = pki();
        let tls = TlsConfig {
            ca_file: Some(pki.ca.clone()),
            ..Default::default()
        };
        assert!(
            handshake(client_config(&tls).unwrap(), pki.server.clone())
                .await
                .is_err()
        );
    }
}
