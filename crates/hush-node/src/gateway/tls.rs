//! HTTPS and WSS on the gateway: rustls on the ring provider, TLS 1.2 and
//! 1.3, with the certificate and key that `[gateway.tls]` names.
//!
//! The certificate is served through [`GatewayCert`], a
//! `ResolvesServerCert` holding the loaded key: [`GatewayCert::reload`]
//! (SIGHUP, or the file watcher when the files change) swaps it for new
//! handshakes; connections already open keep theirs. A pair that does not
//! load (missing file, bad PEM, a key that does not match the certificate)
//! leaves the one in use.
//!
//! [`gen_dev_certs`] (`hush-node gen-cert`) makes a development CA and a
//! server certificate signed by it, for a TLS node in two commands; clients
//! trust the CA with `--ca`.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a usable PEM {what}")]
    Pem { path: PathBuf, what: &'static str },
    #[error("gateway.tls: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("certificate generation: {0}")]
    Generate(#[from] rcgen::Error),
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The gateway's certificate and key, swappable while the node runs.
#[derive(Debug)]
pub struct GatewayCert {
    cert: PathBuf,
    key: PathBuf,
    current: RwLock<Arc<CertifiedKey>>,
}

impl GatewayCert {
    /// Loads the pair (PEM: the chain, leaf first; the private key).
    pub fn load(cert: &Path, key: &Path) -> Result<Self, TlsError> {
        Ok(Self {
            cert: cert.to_owned(),
            key: key.to_owned(),
            current: RwLock::new(Arc::new(read_pair(cert, key)?)),
        })
    }

    /// Reads the files again; new handshakes get the new pair. On error
    /// the pair in use stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        let pair = Arc::new(read_pair(&self.cert, &self.key)?);
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = pair;
        Ok(())
    }

    /// The files this pair is read from.
    pub fn paths(&self) -> [&Path; 2] {
        [&self.cert, &self.key]
    }

    /// The leaf certificate in use (tests check a reload took).
    pub fn leaf(&self) -> CertificateDer<'static> {
        self.current.read().unwrap_or_else(|p| p.into_inner()).cert[0].clone()
    }
}

impl ResolvesServerCert for GatewayCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        )
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> TlsError + '_ {
    move |source| TlsError::Io {
        path: path.to_owned(),
        source,
    }
}

fn read_pair(cert: &Path, key: &Path) -> Result<CertifiedKey, TlsError> {
    let pem_err = |path: &Path, what| TlsError::Pem {
        path: path.to_owned(),
        what,
    };
    // Read first, so a missing file says so (not "bad PEM").
    let cert_pem = std::fs::read(cert).map_err(io(cert))?;
    let key_pem = std::fs::read(key).map_err(io(key))?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| pem_err(cert, "certificate chain"))?;
    if chain.is_empty() {
        return Err(pem_err(cert, "certificate chain"));
    }
    let key_der =
        PrivateKeyDer::from_pem_slice(&key_pem).map_err(|_| pem_err(key, "private key"))?;
    // Checks that the key is the certificate's.
    Ok(CertifiedKey::from_der(chain, key_der, &provider())?)
}

/// The rustls server configuration over `cert` (no client certificates).
pub fn server_config(cert: Arc<GatewayCert>) -> Result<rustls::ServerConfig, TlsError> {
    Ok(rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(cert))
}

/// What [`gen_dev_certs`] wrote.
#[derive(Debug)]
pub struct DevCerts {
    /// The CA certificate clients trust (`--ca`).
    pub ca_cert: PathBuf,
    /// The CA's private key (signs further certificates; keep it off nodes).
    pub ca_key: PathBuf,
    /// The server's certificate (`gateway.tls.cert`).
    pub cert: PathBuf,
    /// The server's private key (`gateway.tls.key`).
    pub key: PathBuf,
}

/// File names in the output directory of [`gen_dev_certs`].
pub const CA_CERT_FILE: &str = "ca.pem";
pub const CA_KEY_FILE: &str = "ca.key";
pub const CERT_FILE: &str = "cert.pem";
pub const KEY_FILE: &str = "key.pem";

/// Makes a development CA and a server certificate for `names` (DNS names
/// or IP addresses) signed by it, in `dir` (created 0700; keys 0600). An
/// existing CA in `dir` is reused, so more certificates can be issued by
/// the same CA; the server pair is replaced.
pub fn gen_dev_certs(dir: &Path, names: &[String]) -> Result<DevCerts, TlsError> {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir).map_err(io(dir))?;
    let out = DevCerts {
        ca_cert: dir.join(CA_CERT_FILE),
        ca_key: dir.join(CA_KEY_FILE),
        cert: dir.join(CERT_FILE),
        key: dir.join(KEY_FILE),
    };

    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "Hush development CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let (ca_key, fresh) = match std::fs::read_to_string(&out.ca_key) {
        Ok(pem) => {
            let key = KeyPair::from_pem(&pem).map_err(|_| TlsError::Pem {
                path: out.ca_key.clone(),
                what: "CA private key",
            })?;
            (key, false)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = KeyPair::generate()?;
            write_file(&out.ca_key, key.serialize_pem().as_bytes(), 0o600)?;
            (key, true)
        }
        Err(e) => return Err(io(&out.ca_key)(e)),
    };
    // An existing CA certificate stays as it is (clients hold copies); one
    // rebuilt from the key with the same subject is the same anchor anyway.
    if fresh || !out.ca_cert.exists() {
        let ca_cert = ca_params.self_signed(&ca_key)?;
        write_file(&out.ca_cert, ca_cert.pem().as_bytes(), 0o644)?;
    }
    let issuer = Issuer::new(ca_params, ca_key);

    let mut params = CertificateParams::new(names.to_vec())?;
    params.distinguished_name.push(
        DnType::CommonName,
        names.first().cloned().unwrap_or_default(),
    );
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;
    // Key first: a node reloading between the two writes finds a pair that
    // does not match and keeps the old one until the certificate lands.
    write_file(&out.key, key.serialize_pem().as_bytes(), 0o600)?;
    write_file(&out.cert, cert.pem().as_bytes(), 0o644)?;
    Ok(out)
}

/// Writes `bytes` to `path` through a temporary file and a rename, with
/// `mode` from the start.
fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), TlsError> {
    use std::io::Write as _;
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, mode);
    #[cfg(not(unix))]
    let _ = mode;
    let mut f = options.open(&tmp).map_err(io(&tmp))?;
    f.write_all(bytes).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dev_certs_load_and_reload() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path().join("tls");
        let out = gen_dev_certs(&d, &["localhost".into(), "127.0.0.1".into()]).expect("gen");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = |p: &Path| std::fs::metadata(p).expect("meta").permissions().mode() & 0o777;
            assert_eq!(mode(&d), 0o700);
            assert_eq!(mode(&out.key), 0o600);
            assert_eq!(mode(&out.ca_key), 0o600);
        }
        let cert = GatewayCert::load(&out.cert, &out.key).expect("load");
        let first = cert.leaf();
        let ca_before = std::fs::read(&out.ca_cert).expect("ca");
        gen_dev_certs(&d, &["localhost".into()]).expect("again");
        assert_eq!(
            std::fs::read(&out.ca_cert).expect("ca"),
            ca_before,
            "the CA is reused"
        );
        cert.reload().expect("reload");
        assert_ne!(cert.leaf(), first, "a reload serves the new certificate");

        // A key that is not the certificate's is refused; the pair in use stays.
        let other = dir.path().join("other");
        let o = gen_dev_certs(&other, &["localhost".into()]).expect("gen");
        std::fs::copy(&o.key, &out.key).expect("copy");
        let before = cert.leaf();
        assert!(cert.reload().is_err());
        assert_eq!(cert.leaf(), before);
        assert!(matches!(
            GatewayCert::load(&d.join("missing.pem"), &out.key),
            Err(TlsError::Io { .. })
        ));
    }
}
