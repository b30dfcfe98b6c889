//! A test CA (rcgen) that issues server certificates, and TLS and HTTP/2 clients that trust it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use super::Resp;

pub struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Default for TestCa {
    fn default() -> Self {
        Self::new("vivgate test CA")
    }
}

impl TestCa {
    pub fn new(name: &str) -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().unwrap();
        TestCa {
            issuer: CertifiedIssuer::self_signed(params, key).unwrap(),
        }
    }

    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    pub fn der(&self) -> CertificateDer<'static> {
        self.issuer.der().clone()
    }

    /// A server certificate for `names`, and its key, as PEM.
    pub fn issue(&self, names: &[&str]) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, names.first().copied().unwrap_or("x"));
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// Writes a certificate for `names` as `<stem>.pem` and `<stem>.key` in `dir`; returns both
    /// paths.
    pub fn write(&self, dir: &Path, stem: &str, names: &[&str]) -> (PathBuf, PathBuf) {
        let (cert, key) = self.issue(names);
        let (c, k) = (
            dir.join(format!("{stem}.pem")),
            dir.join(format!("{stem}.key")),
        );
        std::fs::write(&c, cert).unwrap();
        std::fs::write(&k, key).unwrap();
        (c, k)
    }

    fn client_config(&self, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.der()).unwrap();
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    }

    /// A TLS connection to `addr` with SNI `name` offering `alpn`.
    pub async fn connect(
        &self,
        addr: SocketAddr,
        name: &str,
        alpn: &[&[u8]],
    ) -> std::io::Result<TlsStream<TcpStream>> {
        let tcp = TcpStream::connect(addr).await?;
        TlsConnector::from(self.client_config(alpn))
            .connect(ServerName::try_from(name.to_string()).unwrap(), tcp)
            .await
    }

    /// The certificate the server presented for SNI `name` (its leaf, DER).
    pub async fn presented(&self, addr: SocketAddr, name: &str) -> std::io::Result<Vec<u8>> {
        let tls = self.connect(addr, name, &[b"http/1.1"]).await?;
        Ok(tls.get_ref().1.peer_certificates().unwrap()[0].to_vec())
    }
}

/// An HTTP/2 client over any connection (TLS with ALPN h2, or h2c).
pub async fn h2_handshake<T>(io: T) -> h2::client::SendRequest<Bytes>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (send, conn) = h2::client::handshake(io).await.expect("h2 handshake");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    send
}

/// Sends the request written as HTTP/1 text (`head`: request line and headers; `Host` and the
/// hop-by-hop headers are dropped, the authority is `localhost`) over HTTP/2 and reads the whole
/// response. `None`: no answer.
pub async fn h2_request(
    send: &mut h2::client::SendRequest<Bytes>,
    head: &str,
    body: &[u8],
) -> Option<Resp> {
    let mut lines = head.trim_end().lines().map(|l| l.trim_end_matches('\r'));
    let mut first = lines.next()?.split(' ');
    let (method, target) = (first.next()?, first.next()?);
    let mut headers = Vec::new();
    for l in lines {
        let (n, v) = l.split_once(':')?;
        let n = n.trim().to_ascii_lowercase();
        if !matches!(
            n.as_str(),
            "host"
                | "connection"
                | "keep-alive"
                | "transfer-encoding"
                | "upgrade"
                | "te"
                | "proxy-connection"
        ) {
            headers.push((n, v.trim().as_bytes()));
        }
    }
    let headers: Vec<(&str, &[u8])> = headers.iter().map(|(n, v)| (n.as_str(), *v)).collect();
    match h2_send(send, method, target, &headers, body).await {
        H2Outcome::Answered(r) => Some(r),
        H2Outcome::NotRepresentable => panic!("not expressible over HTTP/2: {head}"),
        H2Outcome::Reset(_) => None,
    }
}

pub async fn read_h2_response(resp: h2::client::ResponseFuture) -> Option<Resp> {
    let resp = tokio::time::timeout(std::time::Duration::from_secs(10), resp)
        .await
        .expect("h2 response within 10 s")
        .ok()?;
    let status = resp.status().as_u16();
    let headers = resp
        .headers()
        .iter()
        .map(|(n, v)| {
            (
                n.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let mut recv = resp.into_body();
    let mut body = Vec::new();
    let read = async {
        while let Some(chunk) = recv.data().await {
            let chunk = chunk.ok()?;
            let _ = recv.flow_control().release_capacity(chunk.len());
            body.extend_from_slice(&chunk);
        }
        Some(())
    };
    tokio::time::timeout(std::time::Duration::from_secs(10), read)
        .await
        .expect("h2 response body within 10 s")?;
    Some(Resp {
        status,
        headers,
        body,
    })
}

/// A recording backend behind TLS, with a certificate for `localhost` from `ca`; it stops when
/// the returned sender is dropped.
pub async fn tls_backend(
    ca: &TestCa,
) -> (
    vivgate::backend::Backend,
    SocketAddr,
    tokio::sync::watch::Sender<bool>,
) {
    use pingora::apps::ServerApp;
    use rustls_pki_types::pem::PemObject;
    let (cert, key) = ca.issue(&["localhost"]);
    let chain = vec![CertificateDer::from_pem_slice(cert.as_bytes()).unwrap()];
    let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .unwrap();
    let acceptor = Arc::new(pingora::listeners::tls::Acceptor::from_server_config(
        Arc::new(config),
    ));
    let backend = vivgate::backend::Backend::new();
    let app = Arc::new(pingora::apps::http_app::HttpServer::new_app(
        backend.clone(),
    ));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (stop, mut rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        loop {
            tokio::select! {
                accepted = l.accept() => {
                    let Ok((tcp, _)) = accepted else { continue };
                    let (acceptor, app, rx) = (acceptor.clone(), app.clone(), rx.clone());
                    tokio::spawn(async move {
                        let l4: pingora::protocols::l4::stream::Stream = tcp.into();
                        if let Ok(tls) = acceptor.tls_handshake(l4).await {
                            let mut next: Option<pingora::protocols::Stream> = Some(Box::new(tls));
                            while let Some(s) = next {
                                next = app.process_new(s, &rx).await;
                            }
                        }
                    });
                }
                _ = rx.changed() => break,
            }
        }
    });
    (backend, addr, stop)
}

/// What became of one HTTP/2 request.
#[derive(Debug)]
pub enum H2Outcome {
    /// The gateway answered.
    Answered(Resp),
    /// The request cannot be written as HTTP/2 at all (the `http` crate, which the h2 server
    /// parses with too, refuses it).
    NotRepresentable,
    /// The stream or connection was reset without an answer.
    Reset(String),
}

/// Sends one request on `send` with exactly these header bytes (no `Host`: the authority is
/// `localhost`).
pub async fn h2_send(
    send: &h2::client::SendRequest<Bytes>,
    method: &str,
    target: &str,
    headers: &[(&str, &[u8])],
    body: &[u8],
) -> H2Outcome {
    let Ok(uri) = http::Uri::try_from(format!("https://localhost{target}")) else {
        return H2Outcome::NotRepresentable;
    };
    // (a fragment, say, is dropped by the parser: that is another request)
    if uri.path_and_query().map(|p| p.as_str()) != Some(target) {
        return H2Outcome::NotRepresentable;
    }
    let mut req = http::Request::builder().method(method).uri(uri);
    for (n, v) in headers {
        let Ok(v) = http::HeaderValue::from_bytes(v) else {
            return H2Outcome::NotRepresentable;
        };
        req = req.header(*n, v);
    }
    let Ok(req) = req.body(()) else {
        return H2Outcome::NotRepresentable;
    };
    let mut send = match send.clone().ready().await {
        Ok(s) => s,
        Err(e) => return H2Outcome::Reset(e.to_string()),
    };
    let (resp, mut stream) = match send.send_request(req, body.is_empty()) {
        Ok(x) => x,
        Err(e) => return H2Outcome::Reset(e.to_string()),
    };
    if !body.is_empty() {
        if let Err(e) = stream.send_data(Bytes::copy_from_slice(body), true) {
            return H2Outcome::Reset(e.to_string());
        }
    }
    match read_h2_response(resp).await {
        Some(r) => H2Outcome::Answered(r),
        None => H2Outcome::Reset("no response".into()),
    }
}
