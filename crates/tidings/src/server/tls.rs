//! TLS with rustls: the certificate chain and private key from PEM files, offered with ALPN
//! (`h2`, then `http/1.1`), and reloaded without dropping a connection.
//!
//! The server's rustls config resolves its certificate at every handshake from
//! [`Certificates`], so a reload changes what new connections see while open ones keep the
//! session they negotiated. A reload that fails (a missing file, a key that does not match the
//! certificate) keeps the certificate in use and says why.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio_rustls::TlsAcceptor;

/// Why a certificate or key could not be loaded; the message names the file and what to fix.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file cannot be read.
    #[error("cannot read the TLS {what} file {}: {source}", path.display())]
    Read {
        /// `certificate` or `key`.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The certificate file is not PEM, or holds no certificate.
    #[error("the TLS certificate file {} {problem}", path.display())]
    Certificate {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        problem: String,
    },
    /// The key file holds no usable private key.
    #[error("the TLS key file {} holds no usable PEM private key: {source}", path.display())]
    Key {
        /// The file.
        path: PathBuf,
        /// What the PEM reader found.
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    /// The key does not fit the certificate, or rustls refuses the configuration.
    #[error("{what}: {source}")]
    Rustls {
        /// Which step.
        what: String,
        /// rustls's reason.
        #[source]
        source: rustls::Error,
    },
}

/// The server's certificate, reloadable from its files.
#[derive(Debug)]
pub struct Certificates {
    cert_path: PathBuf,
    key_path: PathBuf,
    provider: Arc<CryptoProvider>,
    current: RwLock<Arc<CertifiedKey>>,
}

impl Certificates {
    /// Loads the certificate chain (`cert_path`, PEM, leaf first) and its private key
    /// (`key_path`, PEM: PKCS#8, PKCS#1 or SEC1).
    ///
    /// # Errors
    /// [`TlsError`] when a file cannot be read, holds no certificate or key, or the key does
    /// not belong to the certificate.
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<Arc<Self>, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let key = certified_key(cert_path, key_path, &provider)?;
        Ok(Arc::new(Certificates {
            cert_path: cert_path.to_owned(),
            key_path: key_path.to_owned(),
            provider,
            current: RwLock::new(Arc::new(key)),
        }))
    }

    /// Reads both files again; new handshakes use what they hold from now on.
    ///
    /// # Errors
    /// [`TlsError`] as for [`Certificates::load`]; the certificate in use stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        let key = certified_key(&self.cert_path, &self.key_path, &self.provider)?;
        *crate::locks::write(&self.current) = Arc::new(key);
        Ok(())
    }

    /// The acceptor for new connections.
    ///
    /// # Errors
    /// [`TlsError`] when rustls refuses the protocol versions (it does not, with its own
    /// provider).
    pub fn acceptor(self: &Arc<Self>) -> Result<TlsAcceptor, TlsError> {
        let mut config = rustls::ServerConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|source| TlsError::Rustls {
                what: "TLS configuration".into(),
                source,
            })?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(TlsAcceptor::from(Arc::new(config)))
    }
}

impl ResolvesServerCert for Certificates {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(crate::locks::read(&self.current).clone())
    }
}

fn read(path: &Path, what: &'static str) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.to_owned(),
        source,
    })
}

fn certified_key(
    cert_path: &Path,
    key_path: &Path,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, TlsError> {
    let pem = read(cert_path, "certificate")?;
    let chain = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Certificate {
            path: cert_path.to_owned(),
            problem: format!("is not valid PEM: {e}"),
        })?;
    if chain.is_empty() {
        return Err(TlsError::Certificate {
            path: cert_path.to_owned(),
            problem: "holds no CERTIFICATE block".into(),
        });
    }
    let key =
        PrivateKeyDer::from_pem_slice(&read(key_path, "key")?).map_err(|source| TlsError::Key {
            path: key_path.to_owned(),
            source,
        })?;
    CertifiedKey::from_der(chain, key, provider).map_err(|source| TlsError::Rustls {
        what: format!(
            "the TLS key in {} does not fit the certificate in {}",
            key_path.display(),
            cert_path.display()
        ),
        source,
    })
}
