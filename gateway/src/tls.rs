//! Downstream TLS: certificates loaded per snapshot, chosen by SNI during the handshake.
//!
//! The handshake callback reads the *current* snapshot, so a reload that changes a
//! certificate takes effect for the next handshake without restarting listeners.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::listeners::TlsAccept;
use pingora::tls::pkey::{PKey, Private};
use pingora::tls::ssl::{NameType, SslRef};
use pingora::tls::x509::X509;

use crate::config::CertConfig;
use crate::snapshot::Snapshot;

/// A parsed certificate chain, its key, and the names it serves.
pub struct CertifiedKey {
    pub chain: Vec<X509>,
    pub key: PKey<Private>,
    pub names: Vec<String>,
}

impl CertifiedKey {
    /// Reads and checks the PEM files; the error says which file and why.
    pub fn load(c: &CertConfig) -> Result<Self, String> {
        let pem =
            std::fs::read(&c.cert).map_err(|e| format!("cannot read cert `{}`: {e}", c.cert))?;
        let chain = X509::stack_from_pem(&pem)
            .map_err(|e| format!("`{}` is not a PEM certificate chain: {e}", c.cert))?;
        let leaf = chain
            .first()
            .ok_or_else(|| format!("`{}` holds no certificate", c.cert))?;
        let key_pem =
            std::fs::read(&c.key).map_err(|e| format!("cannot read key `{}`: {e}", c.key))?;
        let key = PKey::private_key_from_pem(&key_pem)
            .map_err(|e| format!("`{}` is not a PEM private key: {e}", c.key))?;
        let matches = leaf
            .public_key()
            .map(|pk| pk.public_eq(&key))
            .unwrap_or(false);
        if !matches {
            return Err(format!(
                "key `{}` does not belong to cert `{}`",
                c.key, c.cert
            ));
        }
        let names = if c.server_names.is_empty() {
            leaf.subject_alt_names()
                .map(|sans| {
                    sans.iter()
                        .filter_map(|n| n.dnsname().map(|d| d.to_ascii_lowercase()))
                        .collect()
                })
                .unwrap_or_default()
        } else {
            c.server_names.clone()
        };
        Ok(CertifiedKey { chain, key, names })
    }
}

/// Certificates by server name: exact names, then `*.suffix`, then the first certificate.
#[derive(Default)]
pub struct CertStore {
    certs: Vec<Arc<CertifiedKey>>,
    exact: HashMap<String, usize>,
    wildcard: HashMap<String, usize>,
}

impl CertStore {
    pub fn new(certs: Vec<CertifiedKey>) -> Self {
        let mut store = CertStore::default();
        for (i, c) in certs.into_iter().enumerate() {
            for n in &c.names {
                match n.strip_prefix("*.") {
                    Some(suffix) => store.wildcard.entry(suffix.to_string()).or_insert(i),
                    None => store.exact.entry(n.clone()).or_insert(i),
                };
            }
            store.certs.push(Arc::new(c));
        }
        store
    }

    /// The certificate for `sni` (a wildcard covers one label, as in RFC 6125).
    pub fn select(&self, sni: Option<&str>) -> Option<&Arc<CertifiedKey>> {
        let idx = sni.and_then(|name| {
            let name = name.to_ascii_lowercase();
            self.exact.get(&name).copied().or_else(|| {
                name.split_once('.')
                    .and_then(|(_, suffix)| self.wildcard.get(suffix).copied())
            })
        });
        self.certs.get(idx.unwrap_or(0))
    }
}

/// The handshake hook: picks the certificate from the current snapshot.
pub struct SniCallback {
    pub current: Arc<ArcSwap<Snapshot>>,
}

#[async_trait]
impl TlsAccept for SniCallback {
    async fn certificate_callback(&self, ssl: &mut SslRef) {
        let snap = self.current.load();
        let sni = ssl.servername(NameType::HOST_NAME).map(str::to_string);
        let Some(ck) = snap.certs.select(sni.as_deref()) else {
            // No certificate at all: the handshake fails, which is the only honest answer.
            return;
        };
        let result = (|| {
            let mut chain = ck.chain.iter();
            if let Some(leaf) = chain.next() {
                pingora::tls::ext::ssl_use_certificate(ssl, leaf)?;
            }
            for c in chain {
                pingora::tls::ext::ssl_add_chain_cert(ssl, c)?;
            }
            pingora::tls::ext::ssl_use_private_key(ssl, &ck.key)
        })();
        if let Err(e) = result {
            tracing::warn!(sni = ?sni, error = %e, "failed to install certificate");
        }
    }
}
