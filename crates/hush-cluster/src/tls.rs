//! Node identities and the QUIC endpoint with mutual TLS (rustls on the
//! ring provider, TLS 1.3 only).
//!
//! Every node presents a certificate for `<node id>.hush-cluster` signed by
//! the cluster CA and accepts only peers whose certificate chains to that CA;
//! a client-side connection also checks that the peer is the node it meant
//! to reach. A peer without such a certificate fails the handshake.
//!
//! Development: with no certificate paths configured, [`NodeIdentity::dev`]
//! keeps one CA key in a directory shared by the local nodes (created by
//! whichever starts first, atomically) and issues this node a fresh
//! certificate at every start. The CA *certificate* is rebuilt from that key
//! with a fixed subject: trust anchors are a subject and a public key, so
//! every node derives the same anchor. Production: [`NodeIdentity::from_pem_files`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::RootCertStore;

/// ALPN of the node-to-node protocol.
pub const ALPN: &[u8] = b"hush-cluster/1";
const CA_SUBJECT: &str = "Hush dev cluster CA";
const CA_KEY_FILE: &str = "cluster-ca.key";

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("certificate generation: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("{path}: not a usable PEM {what}")]
    Pem { path: PathBuf, what: &'static str },
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("client certificate verifier: {0}")]
    Verifier(String),
    #[error("QUIC endpoint: {0}")]
    Endpoint(String),
}

type Result<T> = std::result::Result<T, TlsError>;

/// What a node presents and whom it trusts.
#[derive(Debug)]
pub struct NodeIdentity {
    pub node_id: String,
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    pub roots: Arc<RootCertStore>,
}

/// The DNS name a node's certificate is issued for.
pub fn node_dns_name(node_id: &str) -> String {
    format!("{node_id}.hush-cluster")
}

/// The node id an authenticated peer certificate names: the first DNS
/// name `<id>.hush-cluster` of the leaf (the chain to the cluster CA was
/// verified by the handshake). None if it names none.
pub fn node_id_of(chain: &[CertificateDer<'_>]) -> Option<String> {
    let leaf = chain.first()?;
    let cert = webpki::EndEntityCert::try_from(leaf).ok()?;
    let suffix = format!(".{}", node_dns_name(""));
    let suffix = suffix.trim_start_matches('.');
    cert.valid_dns_names().find_map(|name| {
        name.strip_suffix(suffix)
            .and_then(|id| id.strip_suffix('.'))
            .filter(|id| !id.is_empty())
            .map(str::to_owned)
    })
}

fn ca_params() -> Result<CertificateParams> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, CA_SUBJECT);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    Ok(params)
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> TlsError + '_ {
    move |source| TlsError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Loads the dev CA key from `dir`, creating it if no node has yet. Several
/// nodes may race here: the key is written to a temporary file and linked
/// into place, which fails if another node won; then everyone reads the
/// winner's key.
fn dev_ca_key(dir: &Path) -> Result<KeyPair> {
    // Owner-only: it holds the key every node certificate is signed with.
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir).map_err(io(dir))?;
    let path = dir.join(CA_KEY_FILE);
    if !path.exists() {
        let key = KeyPair::generate()?;
        // Unique per key: process ids collide across containers (every
        // node is pid 1 there) sharing one volume.
        let unique: String = key
            .public_key_raw()
            .iter()
            .take(12)
            .map(|b| format!("{b:02x}"))
            .collect();
        let tmp = dir.join(format!("{CA_KEY_FILE}.{}.{unique}.tmp", std::process::id()));
        write_private(&tmp, key.serialize_pem().as_bytes())?;
        let linked = std::fs::hard_link(&tmp, &path);
        let _ = std::fs::remove_file(&tmp);
        match linked {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io(&path)(e)),
        }
    }
    let pem = std::fs::read_to_string(&path).map_err(io(&path))?;
    KeyPair::from_pem(&pem).map_err(|_| TlsError::Pem {
        path,
        what: "CA private key",
    })
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write as _;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut f = options.open(path).map_err(io(path))?;
    f.write_all(bytes).map_err(io(path))?;
    f.sync_all().map_err(io(path))
}

/// A node certificate issued by the dev CA, in memory.
struct Issued {
    ca_cert: rcgen::Certificate,
    cert: rcgen::Certificate,
    key: KeyPair,
}

/// Issues a certificate for `node_id` (`<id>.hush-cluster`, server and
/// client auth) from the dev CA in `ca_dir`, creating the CA on first use.
fn issue(ca_dir: &Path, node_id: &str) -> Result<Issued> {
    let ca_key = dev_ca_key(ca_dir)?;
    let ca_params = ca_params()?;
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca_params, ca_key);

    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(vec![node_dns_name(node_id)])?;
    params
        .distinguished_name
        .push(DnType::CommonName, node_id.to_string());
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let cert = params.signed_by(&key, &issuer)?;
    Ok(Issued { ca_cert, cert, key })
}

/// The files [`write_node_cert_files`] wrote for one node.
#[derive(Debug, Clone)]
pub struct NodeCertFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Issues `node_id` a certificate from the CA whose key is in `ca_dir`
/// (created on first use) and writes what that node needs, and nothing
/// more, to `out` (0700): `ca.pem` (the CA certificate to trust),
/// `node.pem` and `node.key` (0600), for `[cluster.tls]`. The CA key stays
/// in `ca_dir`: a node given only `out` can prove who it is but cannot
/// issue certificates for others (the compose setup's init service does
/// this). Files already in `out` are replaced.
pub fn write_node_cert_files(ca_dir: &Path, node_id: &str, out: &Path) -> Result<NodeCertFiles> {
    let issued = issue(ca_dir, node_id)?;
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(out).map_err(io(out))?;
    let files = NodeCertFiles {
        ca: out.join("ca.pem"),
        cert: out.join("node.pem"),
        key: out.join("node.key"),
    };
    for (path, pem) in [
        (&files.ca, issued.ca_cert.pem()),
        (&files.cert, issued.cert.pem()),
        (&files.key, issued.key.serialize_pem()),
    ] {
        // Written aside and renamed: a node never reads half a file.
        let tmp = path.with_extension("tmp");
        let _ = std::fs::remove_file(&tmp);
        write_private(&tmp, pem.as_bytes())?;
        std::fs::rename(&tmp, path).map_err(io(path))?;
    }
    Ok(files)
}

impl NodeIdentity {
    /// A development identity: the shared dev CA in `ca_dir` (created on
    /// first use) and a fresh certificate for `node_id`.
    pub fn dev(ca_dir: &Path, node_id: &str) -> Result<Self> {
        let issued = issue(ca_dir, node_id)?;
        let mut roots = RootCertStore::empty();
        roots.add(issued.ca_cert.der().clone())?;
        Ok(Self {
            node_id: node_id.to_string(),
            chain: vec![issued.cert.der().clone()],
            key: PrivatePkcs8KeyDer::from(issued.key.serialize_der()).into(),
            roots: Arc::new(roots),
        })
    }

    /// A production identity from PEM files: the CA certificate(s) to
    /// trust, this node's certificate chain and its private key.
    pub fn from_pem_files(node_id: &str, ca: &Path, cert: &Path, key: &Path) -> Result<Self> {
        let pem_err = |path: &Path, what| TlsError::Pem {
            path: path.to_owned(),
            what,
        };
        let mut roots = RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(ca).map_err(|_| pem_err(ca, "CA certificate"))? {
            roots.add(c.map_err(|_| pem_err(ca, "CA certificate"))?)?;
        }
        if roots.is_empty() {
            return Err(pem_err(ca, "CA certificate"));
        }
        let chain = CertificateDer::pem_file_iter(cert)
            .map_err(|_| pem_err(cert, "certificate chain"))?
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|_| pem_err(cert, "certificate chain"))?;
        if chain.is_empty() {
            return Err(pem_err(cert, "certificate chain"));
        }
        let key = PrivateKeyDer::from_pem_file(key).map_err(|_| pem_err(key, "private key"))?;
        Ok(Self {
            node_id: node_id.to_string(),
            chain,
            key,
            roots: Arc::new(roots),
        })
    }

    fn provider() -> Arc<rustls::crypto::CryptoProvider> {
        Arc::new(rustls::crypto::ring::default_provider())
    }

    /// rustls server side: present our chain, require a client certificate
    /// chaining to the cluster CA.
    pub fn server_config(&self) -> Result<rustls::ServerConfig> {
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            self.roots.clone(),
            Self::provider(),
        )
        .build()
        .map_err(|e| TlsError::Verifier(e.to_string()))?;
        let mut config = rustls::ServerConfig::builder_with_provider(Self::provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.chain.clone(), self.key.clone_key())?;
        config.alpn_protocols = vec![ALPN.to_vec()];
        Ok(config)
    }

    /// rustls client side: trust only the cluster CA, present our chain.
    pub fn client_config(&self) -> Result<rustls::ClientConfig> {
        let mut config = rustls::ClientConfig::builder_with_provider(Self::provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_root_certificates(self.roots.clone())
            .with_client_auth_cert(self.chain.clone(), self.key.clone_key())?;
        config.alpn_protocols = vec![ALPN.to_vec()];
        Ok(config)
    }

    /// A QUIC endpoint bound to `bind` that accepts peers and dials them,
    /// both with mutual TLS.
    pub fn endpoint(&self, bind: SocketAddr) -> Result<quinn::Endpoint> {
        let server_crypto =
            quinn::crypto::rustls::QuicServerConfig::try_from(self.server_config()?)
                .map_err(|e| TlsError::Endpoint(e.to_string()))?;
        let client_crypto =
            quinn::crypto::rustls::QuicClientConfig::try_from(self.client_config()?)
                .map_err(|e| TlsError::Endpoint(e.to_string()))?;
        let mut transport = quinn::TransportConfig::default();
        // quinn's keep-alive is off by default; the mesh wants live paths.
        transport.keep_alive_interval(Some(std::time::Duration::from_secs(1)));
        // A silent peer fails its pending streams after this (the view
        // usually drops it sooner, which closes the connection at once).
        transport.max_idle_timeout(Some(
            quinn::IdleTimeout::try_from(std::time::Duration::from_secs(5))
                .map_err(|e| TlsError::Endpoint(e.to_string()))?,
        ));
        let transport = Arc::new(transport);
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(server_crypto));
        server.transport_config(transport.clone());
        let mut endpoint = quinn::Endpoint::server(server, bind)
            .map_err(|e| TlsError::Endpoint(format!("bind {bind}: {e}")))?;
        let mut client = quinn::ClientConfig::new(Arc::new(client_crypto));
        client.transport_config(transport);
        endpoint.set_default_client_config(client);
        Ok(endpoint)
    }
}

/// The TLS server name to dial `node_id` with.
pub fn server_name(node_id: &str) -> Option<ServerName<'static>> {
    ServerName::try_from(node_dns_name(node_id)).ok()
}
