//! A raw HTTP/1.1 (or HTTP/2) client that controls every byte it sends, and the answers it reads.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::tls;

#[derive(Debug, Clone)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn header_count(&self, name: &str) -> usize {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .count()
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", self.text()))
    }
}

/// Asserts a gateway envelope: the status, `Content-Type: application/json`, exactly the three
/// fields, and an error message that contains `needle`.
#[track_caller]
pub fn assert_envelope(resp: &Resp, status: u16, needle: &str) {
    assert_eq!(resp.status, status, "status; body: {}", resp.text());
    assert_eq!(
        resp.header("content-type"),
        Some("application/json"),
        "content type"
    );
    let v = resp.json();
    let obj = v.as_object().expect("envelope is an object");
    assert_eq!(
        obj.len(),
        3,
        "envelope has exactly success, data, error: {v}"
    );
    assert_eq!(v["success"], serde_json::Value::Bool(false));
    assert!(v["data"].is_null(), "data is null: {v}");
    let msg = v["error"].as_str().expect("error is a string");
    assert!(
        msg.contains(needle),
        "error {msg:?} should contain {needle:?}"
    );
    assert!(
        resp.header("x-request-id").is_some(),
        "every response has X-Request-Id"
    );
}

/// A byte stream a [`Client`] speaks HTTP/1.1 on (TCP or TLS).
pub trait Conn: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}

impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Conn for T {}

/// A raw HTTP/1.1 client on one connection, or an HTTP/2 client that takes the same request
/// text (see [`tls::h2_request`]).
pub struct Client {
    stream: Box<dyn Conn>,
    buf: Vec<u8>,
    /// The request in flight was a HEAD: its response has no body.
    head: bool,
    h2: Option<h2::client::SendRequest<bytes::Bytes>>,
}

impl Client {
    pub async fn connect(addr: SocketAddr) -> Client {
        Client::over(Box::new(TcpStream::connect(addr).await.unwrap()))
    }

    pub fn over(stream: Box<dyn Conn>) -> Client {
        Client {
            stream,
            buf: Vec::new(),
            head: false,
            h2: None,
        }
    }

    pub fn h2(send: h2::client::SendRequest<bytes::Bytes>) -> Client {
        Client {
            stream: Box::new(tokio::io::duplex(64).0),
            buf: Vec::new(),
            head: false,
            h2: Some(send),
        }
    }

    pub fn is_h2(&self) -> bool {
        self.h2.is_some()
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    /// Like [`Client::send_raw`], for a peer that may have closed.
    pub async fn try_send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes).await
    }

    /// Sends `head` (request line and headers, without the final blank line) and `body`.
    pub async fn request(&mut self, head: &str, body: &[u8]) -> Resp {
        self.try_request(head, body)
            .await
            .expect("connection closed before a response head")
    }

    /// Like [`Client::request`]; `None` when the server closed the connection without
    /// answering (or the request could not be sent).
    pub async fn try_request(&mut self, head: &str, body: &[u8]) -> Option<Resp> {
        if let Some(send) = &mut self.h2 {
            return tls::h2_request(send, head, body).await;
        }
        let mut raw = head
            .trim_end()
            .replace('\n', "\r\n")
            .replace("\r\r\n", "\r\n")
            .into_bytes();
        raw.extend_from_slice(b"\r\n\r\n");
        raw.extend_from_slice(body);
        self.head = head.starts_with("HEAD ");
        self.stream.write_all(&raw).await.ok()?;
        self.try_read_response().await
    }

    pub async fn get(&mut self, path: &str, key: Option<&str>) -> Resp {
        let auth = key
            .map(|k| format!("\nAuthorization: Bearer {k}"))
            .unwrap_or_default();
        self.request(&format!("GET {path} HTTP/1.1\nHost: t{auth}"), b"")
            .await
    }

    pub async fn post(&mut self, path: &str, key: &str, body: &[u8]) -> Resp {
        self.request(
            &format!(
                "POST {path} HTTP/1.1\nHost: t\nAuthorization: Bearer {key}\nContent-Type: application/json\nContent-Length: {}",
                body.len()
            ),
            body,
        )
        .await
    }

    async fn fill(&mut self) -> usize {
        let mut chunk = [0u8; 16384];
        let n = tokio::time::timeout(Duration::from_secs(10), self.stream.read(&mut chunk))
            .await
            .expect("response within 10 s")
            .unwrap_or(0);
        self.buf.extend_from_slice(&chunk[..n]);
        n
    }

    /// Reads one response (any 1xx responses are returned as they come).
    pub async fn read_response(&mut self) -> Resp {
        self.try_read_response()
            .await
            .expect("connection closed before a response head")
    }

    /// Like [`Client::read_response`]; `None` when the connection closes before a head.
    pub async fn try_read_response(&mut self) -> Option<Resp> {
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 64];
            let mut r = httparse::Response::new(&mut headers);
            match r.parse(&self.buf).unwrap() {
                httparse::Status::Complete(n) => {
                    let status = r.code.unwrap();
                    let hs: Vec<(String, String)> = r
                        .headers
                        .iter()
                        .map(|h| {
                            (
                                h.name.to_string(),
                                String::from_utf8_lossy(h.value).into_owned(),
                            )
                        })
                        .collect();
                    self.buf.drain(..n);
                    let mut resp = Resp {
                        status,
                        headers: hs,
                        body: Vec::new(),
                    };
                    if (100..200).contains(&status) || status == 204 || status == 304 || self.head {
                        return Some(resp);
                    }
                    resp.body = self.read_body(&resp).await;
                    return Some(resp);
                }
                httparse::Status::Partial => {
                    if self.fill().await == 0 {
                        return None;
                    }
                }
            }
        }
    }

    async fn read_body(&mut self, resp: &Resp) -> Vec<u8> {
        if let Some(len) = resp.header("content-length") {
            let len: usize = len.parse().unwrap();
            while self.buf.len() < len {
                assert!(self.fill().await > 0, "connection closed mid-body");
            }
            return self.buf.drain(..len).collect();
        }
        if resp
            .header("transfer-encoding")
            .is_some_and(|v| v.contains("chunked"))
        {
            let mut body = Vec::new();
            loop {
                while !self.buf.windows(2).any(|w| w == b"\r\n") {
                    assert!(self.fill().await > 0);
                }
                let pos = self.buf.windows(2).position(|w| w == b"\r\n").unwrap();
                let size = usize::from_str_radix(
                    std::str::from_utf8(&self.buf[..pos]).unwrap().trim(),
                    16,
                )
                .unwrap();
                self.buf.drain(..pos + 2);
                while self.buf.len() < size + 2 {
                    assert!(self.fill().await > 0);
                }
                body.extend(self.buf.drain(..size));
                self.buf.drain(..2);
                if size == 0 {
                    return body;
                }
            }
        }
        while self.fill().await > 0 {}
        std::mem::take(&mut self.buf)
    }

    /// True when the server has closed the connection (reads EOF within 2 s).
    pub async fn is_closed(&mut self) -> bool {
        let mut b = [0u8; 1];
        matches!(
            tokio::time::timeout(Duration::from_secs(2), self.stream.read(&mut b)).await,
            Ok(Ok(0)) | Ok(Err(_))
        )
    }
}
