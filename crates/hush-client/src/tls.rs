//! Whom the client trusts for `https://` and `wss://` ([`Trust`]): the
//! operating system's roots (rustls-platform-verifier), or only the CA
//! certificates of one PEM file (`hush --ca FILE`, for a node with a
//! private or development CA). rustls on the ring provider either way.
//!
//! reqwest is built without a crypto provider of its own (the workspace
//! uses ring, not aws-lc-rs): [`use_ring`] installs ring as the process's
//! default rustls provider, once, before any reqwest client is built. The
//! SDK calls it wherever it builds one; a program that builds reqwest
//! clients itself before touching the SDK calls it first.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::CertificateDer;

use crate::error::{ClientError, Result};

/// The certificate authorities a client accepts.
#[derive(Clone, Debug, Default)]
pub enum Trust {
    /// The system's roots.
    #[default]
    System,
    /// Only these CAs (read from `path`).
    Ca {
        path: PathBuf,
        config: Arc<rustls::ClientConfig>,
    },
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Installs ring as the process's default rustls provider unless one is
/// installed already (then that one stays). Idempotent.
pub fn use_ring() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Err only if another thread installed one meanwhile: fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

fn tls_error(e: impl std::fmt::Display) -> ClientError {
    ClientError::InvalidArgument(format!("TLS configuration: {e}"))
}

impl Trust {
    /// Trusts only the CA certificate(s) in the PEM file at `path`.
    pub fn ca_file(path: &Path) -> Result<Self> {
        let bad =
            |why: String| ClientError::InvalidArgument(format!("--ca {}: {why}", path.display()));
        let pem = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(&pem) {
            let c = c.map_err(|e| bad(format!("not a PEM certificate ({e})")))?;
            roots
                .add(c)
                .map_err(|e| bad(format!("not a CA certificate ({e})")))?;
        }
        if roots.is_empty() {
            return Err(bad("no certificate in the file".into()));
        }
        let config = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(tls_error)?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Trust::Ca {
            path: path.to_owned(),
            config: Arc::new(config),
        })
    }

    /// The rustls client configuration for this trust (the system one is
    /// built once per process: it loads the system's certificates).
    pub fn client_config(&self) -> Result<Arc<rustls::ClientConfig>> {
        match self {
            Trust::Ca { config, .. } => Ok(config.clone()),
            Trust::System => {
                static SYSTEM: OnceLock<std::result::Result<Arc<rustls::ClientConfig>, String>> =
                    OnceLock::new();
                SYSTEM
                    .get_or_init(|| {
                        let verifier = rustls_platform_verifier::Verifier::new(provider())
                            .map_err(|e| e.to_string())?;
                        let config = rustls::ClientConfig::builder_with_provider(provider())
                            .with_safe_default_protocol_versions()
                            .map_err(|e| e.to_string())?
                            .dangerous() // the platform verifier: not dangerous, just custom
                            .with_custom_certificate_verifier(Arc::new(verifier))
                            .with_no_client_auth();
                        Ok(Arc::new(config))
                    })
                    .clone()
                    .map_err(tls_error)
            }
        }
    }

    /// A reqwest client builder for `server` that uses this trust for
    /// `https://` (and refuses to follow it anywhere else but `https://`).
    pub fn reqwest_builder(&self, server: &str) -> Result<reqwest::ClientBuilder> {
        use_ring();
        let builder = reqwest::Client::builder();
        if !server.starts_with("https://") {
            return Ok(builder);
        }
        let config = (*self.client_config()?).clone();
        Ok(builder.tls_backend_preconfigured(config).https_only(true))
    }

    /// What is trusted, for messages.
    pub fn describe(&self) -> String {
        match self {
            Trust::System => "the system's roots".into(),
            Trust::Ca { path, .. } => format!("the CA in {}", path.display()),
        }
    }
}
