//! TLS termination (rustls, the same ring provider pingora's `rustls` feature uses).
//!
//! Certificates belong to the snapshot: a reload (SIGHUP, `/reload`) that reads new files swaps
//! them in, and a reload whose certificate or key does not load is refused whole, so the old
//! certificate stays. The acceptor itself is built once per listener and asks the current
//! snapshot for a certificate at every handshake, chosen by SNI against each certificate's own
//! names.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::sync::Arc;

use pingora::listeners::tls::Acceptor;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};

/// One listener's certificates, in config order; the first answers a client without SNI or
/// whose name no certificate covers.
#[derive(Clone, Default)]
pub struct Certificates(pub BTreeMap<String, Vec<Arc<CertifiedKey>>>);

impl fmt::Debug for Certificates {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.0.iter().map(|(k, v)| (k, v.len())))
            .finish()
    }
}

impl Certificates {
    /// Certificates over all listeners.
    pub fn count(&self) -> usize {
        self.0.values().map(Vec::len).sum()
    }

    /// How many of these certificates `old` did not have (told by the leaf).
    pub fn new_since(&self, old: &Certificates) -> usize {
        let leaf = |c: &Arc<CertifiedKey>| c.cert.first().map(|d| d.as_ref().to_vec());
        let before: std::collections::HashSet<_> = old.0.values().flatten().map(leaf).collect();
        self.0
            .values()
            .flatten()
            .filter(|c| !before.contains(&leaf(c)))
            .count()
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Loads a PEM certificate chain and its private key, and checks that they belong together.
/// The error names which file is wrong.
pub fn load_pair(cert: &Path, key: &Path) -> Result<Arc<CertifiedKey>, (&'static str, String)> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| ("cert", format!("cannot read {}: {e}", cert.display())))?
        .collect::<Result<_, _>>()
        .map_err(|e| {
            (
                "cert",
                format!("{}: not a PEM certificate: {e}", cert.display()),
            )
        })?;
    if chain.is_empty() {
        return Err(("cert", format!("{}: no certificate in it", cert.display())));
    }
    webpki::EndEntityCert::try_from(&chain[0]).map_err(|e| {
        (
            "cert",
            format!("{}: not a valid certificate: {e}", cert.display()),
        )
    })?;
    let private = PrivateKeyDer::from_pem_file(key).map_err(|e| {
        let encrypted = std::fs::read(key).is_ok_and(|t| t.windows(9).any(|w| w == b"ENCRYPTED"));
        let why = if encrypted {
            "an encrypted key (not supported: decrypt it, e.g. `openssl pkey -in KEY -out PLAIN`)"
                .to_string()
        } else {
            format!("no usable private key: {e}")
        };
        ("key", format!("{}: {why}", key.display()))
    })?;
    let signing = provider()
        .key_provider
        .load_private_key(private)
        .map_err(|e| {
            (
                "key",
                format!("{}: not a usable private key: {e}", key.display()),
            )
        })?;
    let ck = CertifiedKey::new(chain, signing);
    match ck.keys_match() {
        // a key type whose public half cannot be read: the handshake is the check
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
        Err(e) => {
            return Err((
                "key",
                format!("{} does not match {}: {e}", key.display(), cert.display()),
            ))
        }
    }
    Ok(Arc::new(ck))
}

/// Does `ck`'s end-entity certificate cover `name` (wildcards included)?
fn covers(ck: &CertifiedKey, name: &ServerName<'_>) -> bool {
    ck.cert.first().is_some_and(|der| {
        webpki::EndEntityCert::try_from(der)
            .is_ok_and(|ee| ee.verify_is_valid_for_subject_name(name).is_ok())
    })
}

/// Picks `listen`'s certificate for the SNI `name`.
pub fn choose(certs: &[Arc<CertifiedKey>], name: Option<&str>) -> Option<Arc<CertifiedKey>> {
    let by_name = name
        .and_then(|n| ServerName::try_from(n).ok())
        .and_then(|n| certs.iter().find(|c| covers(c, &n)));
    by_name.or(certs.first()).cloned()
}

/// The current certificates, read at each handshake.
pub type CurrentCerts = Arc<dyn Fn() -> Arc<Certificates> + Send + Sync>;

struct SniResolver {
    listen: String,
    current: CurrentCerts,
}

impl fmt::Debug for SniResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SniResolver")
            .field("listen", &self.listen)
            .finish()
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let current = (self.current)();
        let certs = current.0.get(&self.listen)?;
        choose(certs, hello.server_name())
    }
}

/// The acceptor of the TLS listener `listen`: TLS 1.2 and 1.3, ALPN `h2` (when `http2`) and
/// `http/1.1`, certificates from the current snapshot.
pub fn acceptor(listen: &str, http2: bool, current: CurrentCerts) -> Result<Acceptor, String> {
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS12, &rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(SniResolver {
            listen: listen.to_string(),
            current,
        }));
    config.alpn_protocols = if http2 {
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    };
    Ok(Acceptor::from_server_config(Arc::new(config)))
}
