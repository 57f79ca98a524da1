//! Throw-away certificates for TLS members, generated with rcgen.

use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};

use super::util::{private_temp_dir, remove_dir};

/// Paths of the PEM files generated for a TLS member (see
/// [`EtcdBuilder::tls`](super::EtcdBuilder::tls)).
///
/// Everything lives in one private temp directory ([`dir`](Self::dir)) that
/// is removed when the last [`Etcd`](super::Etcd) or
/// [`Cluster`](super::Cluster) using it is dropped. Keys are PKCS#8 ECDSA
/// P-256, certificates are valid from 1975 to 4096.
///
/// ```no_run
/// # async fn demo() -> std::io::Result<()> {
/// use etcdutil::testing::Etcd;
///
/// let etcd = Etcd::builder().tls(true).client_cert_auth(true).start().await?;
/// let files = etcd.tls_files().expect("a TLS member has TLS files");
/// let ca_pem = std::fs::read_to_string(&files.ca_cert)?;
/// assert!(ca_pem.contains("BEGIN CERTIFICATE"));
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct TlsFiles {
    /// The directory holding every file below.
    pub dir: PathBuf,
    /// The CA certificate that signed the server and client certificates.
    pub ca_cert: PathBuf,
    /// The private key of [`ca_cert`](Self::ca_cert), to sign more
    /// certificates in a test.
    pub ca_key: PathBuf,
    /// etcd's server certificate: SANs `127.0.0.1`, `::1` and `localhost`,
    /// extended key usages serverAuth and clientAuth (etcd also presents it
    /// as a client, to itself).
    pub server_cert: PathBuf,
    /// The private key of [`server_cert`](Self::server_cert).
    pub server_key: PathBuf,
    /// A client certificate signed by [`ca_cert`](Self::ca_cert), accepted by
    /// `--client-cert-auth`. Its common name is
    /// [`EtcdBuilder::client_common_name`](super::EtcdBuilder::client_common_name)
    /// (etcd uses it as the user name when auth is enabled).
    pub client_cert: PathBuf,
    /// The private key of [`client_cert`](Self::client_cert).
    pub client_key: PathBuf,
    /// Another self-signed CA that signed neither etcd's certificate nor the
    /// client certificate: verifying etcd with it must fail.
    pub other_ca_cert: PathBuf,
    /// A client certificate signed by [`other_ca_cert`](Self::other_ca_cert):
    /// etcd with `--client-cert-auth` must reject it.
    pub other_client_cert: PathBuf,
    /// The private key of [`other_client_cert`](Self::other_client_cert).
    pub other_client_key: PathBuf,
}

/// Owns the directory of a [`TlsFiles`] and removes it on drop.
#[derive(Debug)]
pub(crate) struct TlsDir {
    pub(crate) files: TlsFiles,
}

impl Drop for TlsDir {
    fn drop(&mut self) {
        remove_dir(&self.files.dir);
    }
}

fn gen_err(e: rcgen::Error) -> io::Error {
    io::Error::other(format!("generating test certificates: {e}"))
}

fn dn(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "etcdutil testing");
    dn.push(DnType::CommonName, common_name);
    dn
}

fn ca_params(common_name: &str) -> CertificateParams {
    let mut p = CertificateParams::default();
    p.distinguished_name = dn(common_name);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p
}

fn leaf(
    sans: &[&str],
    common_name: &str,
    ekus: &[ExtendedKeyUsagePurpose],
    issuer: &Issuer<'_, KeyPair>,
) -> io::Result<(String, String)> {
    let mut p = CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .map_err(gen_err)?;
    p.distinguished_name = dn(common_name);
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    p.extended_key_usages = ekus.to_vec();
    p.use_authority_key_identifier_extension = true;
    let key = KeyPair::generate().map_err(gen_err)?;
    let cert = p.signed_by(&key, issuer).map_err(gen_err)?;
    Ok((cert.pem(), key.serialize_pem()))
}

fn write(path: &Path, contents: &str, private: bool) -> io::Result<()> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(if private { 0o600 } else { 0o644 })
        .open(path)?;
    f.write_all(contents.as_bytes())
}

impl TlsDir {
    /// Generates a CA, a server certificate, a client certificate and an
    /// unrelated CA with its own client certificate, in a new temp dir.
    pub(crate) fn generate(client_common_name: &str) -> io::Result<TlsDir> {
        let dir = private_temp_dir("etcdutil-tls")?;
        // From here on the directory is owned: removed if anything fails.
        let owned = TlsDir {
            files: TlsFiles {
                ca_cert: dir.join("ca.pem"),
                ca_key: dir.join("ca-key.pem"),
                server_cert: dir.join("server.pem"),
                server_key: dir.join("server-key.pem"),
                client_cert: dir.join("client.pem"),
                client_key: dir.join("client-key.pem"),
                other_ca_cert: dir.join("other-ca.pem"),
                other_client_cert: dir.join("other-client.pem"),
                other_client_key: dir.join("other-client-key.pem"),
                dir,
            },
        };
        let f = &owned.files;

        let ca_key = KeyPair::generate().map_err(gen_err)?;
        let ca = ca_params("etcdutil test CA");
        let ca_cert = ca.self_signed(&ca_key).map_err(gen_err)?;
        write(&f.ca_cert, &ca_cert.pem(), false)?;
        write(&f.ca_key, &ca_key.serialize_pem(), true)?;
        let issuer = Issuer::new(ca, ca_key);

        let (cert, key) = leaf(
            &["127.0.0.1", "::1", "localhost"],
            "etcdutil test server",
            &[
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
            &issuer,
        )?;
        write(&f.server_cert, &cert, false)?;
        write(&f.server_key, &key, true)?;

        let (cert, key) = leaf(
            &[],
            client_common_name,
            &[ExtendedKeyUsagePurpose::ClientAuth],
            &issuer,
        )?;
        write(&f.client_cert, &cert, false)?;
        write(&f.client_key, &key, true)?;

        let other_key = KeyPair::generate().map_err(gen_err)?;
        let other = ca_params("etcdutil other test CA");
        let other_cert = other.self_signed(&other_key).map_err(gen_err)?;
        write(&f.other_ca_cert, &other_cert.pem(), false)?;
        let other_issuer = Issuer::new(other, other_key);
        let (cert, key) = leaf(
            &[],
            client_common_name,
            &[ExtendedKeyUsagePurpose::ClientAuth],
            &other_issuer,
        )?;
        write(&f.other_client_cert, &cert, false)?;
        write(&f.other_client_key, &key, true)?;

        Ok(owned)
    }
}
