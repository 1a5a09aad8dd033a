//! The webhook's serving certificate: files (a Secret that cert-manager renews,
//! read again when they change) or, for development and tests, one made at
//! start-up under a CA of its own whose certificate goes to a file for the
//! webhook configuration's `caBundle`.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::error::TlsError;

/// Where the serving certificate comes from.
#[derive(Clone, Debug)]
pub enum Tls {
    /// PEM files, re-read when they change (cert-manager renews them in place).
    Files { cert: PathBuf, key: PathBuf },
    /// A CA and a certificate for `names` (DNS names or IP addresses) made at
    /// start-up; the CA's certificate is written to `ca_out`.
    SelfSigned { names: Vec<String>, ca_out: PathBuf },
}

/// The rustls configuration serving `tls`, HTTP/2 and HTTP/1.1 offered.
pub fn server_config(tls: &Tls, provider: Arc<CryptoProvider>) -> Result<rustls::ServerConfig, TlsError> {
    let resolver: Arc<dyn ResolvesServerCert> = match tls {
        Tls::Files { cert, key } => Arc::new(Reloading::new(cert.clone(), key.clone(), &provider)?),
        Tls::SelfSigned { names, ca_out } => {
            let (ca_pem, key) = self_signed(names, &provider)?;
            write_ca(ca_out, &ca_pem)?;
            Arc::new(Fixed(Arc::new(key)))
        }
    };
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Rustls)?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

#[derive(Debug)]
struct Fixed(Arc<CertifiedKey>);

impl ResolvesServerCert for Fixed {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// How often a handshake looks whether the files changed.
const RECHECK: Duration = Duration::from_secs(10);

/// The files' certificate, read again on the first handshake after they change.
/// A renewal that cannot be read is logged and the previous certificate kept.
#[derive(Debug)]
struct Reloading {
    cert: PathBuf,
    key: PathBuf,
    provider: Arc<CryptoProvider>,
    current: Mutex<Loaded>,
}

#[derive(Debug)]
struct Loaded {
    key: Arc<CertifiedKey>,
    modified: (Option<SystemTime>, Option<SystemTime>),
    checked: Instant,
}

impl Reloading {
    fn new(cert: PathBuf, key: PathBuf, provider: &Arc<CryptoProvider>) -> Result<Self, TlsError> {
        let modified = modified(&cert, &key);
        let loaded = load(&cert, &key, provider)?;
        let current = Mutex::new(Loaded { key: Arc::new(loaded), modified, checked: Instant::now() });
        Ok(Reloading { cert, key, provider: provider.clone(), current })
    }
}

impl ResolvesServerCert for Reloading {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let mut current = self.current.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if current.checked.elapsed() >= RECHECK {
            current.checked = Instant::now();
            let modified = modified(&self.cert, &self.key);
            if modified != current.modified {
                match load(&self.cert, &self.key, &self.provider) {
                    Ok(key) => {
                        tracing::info!(cert = %self.cert.display(), "serving certificate reloaded");
                        current.key = Arc::new(key);
                        current.modified = modified;
                    }
                    Err(e) => tracing::warn!("{e}; still serving the previous certificate"),
                }
            }
        }
        Some(current.key.clone())
    }
}

fn modified(cert: &Path, key: &Path) -> (Option<SystemTime>, Option<SystemTime>) {
    let at = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    (at(cert), at(key))
}

fn load(cert: &Path, key: &Path, provider: &CryptoProvider) -> Result<CertifiedKey, TlsError> {
    let bad = |path: &Path, e: &dyn std::fmt::Display| TlsError::Read(path.to_owned(), e.to_string());
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| bad(cert, &e))?;
    if chain.is_empty() {
        return Err(bad(cert, &"no CERTIFICATE block"));
    }
    let private = PrivateKeyDer::from_pem_file(key).map_err(|e| bad(key, &e))?;
    certified(chain, private, provider)
}

fn certified(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, TlsError> {
    let signing = provider.key_provider.load_private_key(key).map_err(TlsError::Rustls)?;
    let certified = CertifiedKey::new(chain, signing);
    certified.keys_match().map_err(TlsError::Rustls)?;
    Ok(certified)
}

/// A CA made here and a serving certificate it signs for `names`.
fn self_signed(names: &[String], provider: &CryptoProvider) -> Result<(String, CertifiedKey), TlsError> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.distinguished_name.push(DnType::CommonName, "vaultlet inject (self-signed)");
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca, ca_key);

    let key = KeyPair::generate()?;
    let mut serving = CertificateParams::new(names.to_vec())?;
    serving.distinguished_name.push(DnType::CommonName, names.first().map_or("vaultlet-inject", String::as_str));
    let cert = serving.signed_by(&key, &issuer)?;
    let private = PrivateKeyDer::try_from(key.serialize_der()).map_err(|e| TlsError::Generate(e.to_string()))?;
    let certified = certified(vec![cert.der().clone()], private, provider)?;
    Ok((ca_cert.pem(), certified))
}

fn write_ca(path: &Path, pem: &str) -> Result<(), TlsError> {
    let write = || -> std::io::Result<()> {
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let mut file = tempfile::NamedTempFile::new_in(dir)?;
        std::io::Write::write_all(&mut file, pem.as_bytes())?;
        file.persist(path).map_err(|e| e.error)?;
        Ok(())
    };
    write().map_err(|e| TlsError::Read(path.to_owned(), format!("cannot write the CA certificate: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn provider() -> Arc<CryptoProvider> {
        Arc::new(rustls::crypto::aws_lc_rs::default_provider())
    }

    #[test]
    fn a_self_signed_certificate_names_its_hosts_and_writes_the_ca() {
        let dir = tempfile::tempdir().unwrap();
        let ca_out = dir.path().join("ca.crt");
        let tls = Tls::SelfSigned {
            names: vec!["127.0.0.1".into(), "vaultlet-inject.vaultlet-system.svc".into()],
            ca_out: ca_out.clone(),
        };
        server_config(&tls, provider()).unwrap();
        let ca = std::fs::read_to_string(ca_out).unwrap();
        assert!(ca.starts_with("-----BEGIN CERTIFICATE-----"), "{ca}");
    }

    #[test]
    fn unreadable_files_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("tls.crt");
        std::fs::write(&cert, "not pem").unwrap();
        let tls = Tls::Files { cert: cert.clone(), key: dir.path().join("tls.key") };
        let err = server_config(&tls, provider()).unwrap_err().to_string();
        assert!(err.contains("tls.crt"), "{err}");
    }
}
