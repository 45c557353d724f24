//! TLS client settings for the agent's MQTT connection: the broker's CA (or the system's
//! roots) and an optional client certificate, with ring as the crypto provider.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .with_context(|| format!("cannot read {}", path.display()))?
        .collect::<std::result::Result<_, _>>()
        .with_context(|| format!("{} is not PEM certificates", path.display()))?;
    anyhow::ensure!(!certs.is_empty(), "{} holds no certificate", path.display());
    Ok(certs)
}

pub fn client_config(
    ca_file: &Path,
    cert_file: &Path,
    key_file: &Path,
) -> Result<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    if ca_file.as_os_str().is_empty() {
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    } else {
        for cert in certificates(ca_file).context("ca_file")? {
            roots
                .add(cert)
                .context("ca_file: not a usable CA certificate")?;
        }
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_root_certificates(roots);
    if cert_file.as_os_str().is_empty() {
        return Ok(builder.with_no_client_auth());
    }
    let chain = certificates(cert_file).context("cert_file")?;
    crate::sysinfo_ids::read_secret(key_file, "client key (mqtt.client_key_file)")?;
    let key = PrivateKeyDer::from_pem_file(key_file).with_context(|| {
        format!(
            "client_key_file: {} is not a PEM private key",
            key_file.display()
        )
    })?;
    builder
        .with_client_auth_cert(chain, key)
        .context("cert_file and client_key_file do not match")
}
