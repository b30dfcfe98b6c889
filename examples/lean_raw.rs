//! Issue 16's prototype (b), the floor of a lean HTTP/1 path: a keep-alive HTTP/1.1 proxy loop of
//! its own over the raw sockets, with reused buffers and httparse, and no checks. Each client
//! connection keeps one upstream connection for its lifetime (what an upstream pool gives a
//! steady load). It handles what the load harness sends (requests without a body, responses with
//! `Content-Length`) and closes the connection on anything else: it measures the cost of the
//! approach, it is not a proxy to deploy.
//!
//! `cargo run --release --example lean_raw -- LISTEN UPSTREAM`

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const MAX_HEAD: usize = 16 * 1024;
const MAX_HEADERS: usize = 64;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(listen), Some(upstream)) = (args.get(1), args.get(2)) else {
        eprintln!("usage: lean_raw LISTEN UPSTREAM");
        std::process::exit(2);
    };
    let upstream: SocketAddr = upstream.parse().expect("UPSTREAM is ip:port");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let listener = TcpListener::bind(listen).await.expect("listen");
        loop {
            let Ok((client, _)) = listener.accept().await else {
                continue;
            };
            let _ = client.set_nodelay(true);
            tokio::spawn(async move {
                let _ = connection(client, upstream).await;
            });
        }
    });
}

/// A fixed buffer allocated once per connection: `data[..len]` holds what was read.
struct Buf {
    data: Vec<u8>,
    len: usize,
}

impl Buf {
    fn new() -> Buf {
        Buf {
            data: vec![0; 64 * 1024],
            len: 0,
        }
    }

    /// Drops the first `n` bytes.
    fn consume(&mut self, n: usize) {
        self.data.copy_within(n..self.len, 0);
        self.len -= n;
    }

    async fn read_more(&mut self, s: &mut TcpStream) -> std::io::Result<usize> {
        if self.len == self.data.len() {
            return Err(std::io::ErrorKind::InvalidData.into());
        }
        let n = s.read(&mut self.data[self.len..]).await?;
        self.len += n;
        Ok(n)
    }

    /// Reads until a complete head is buffered and returns its length; `None` at a clean end of
    /// the stream.
    async fn read_head(&mut self, s: &mut TcpStream) -> std::io::Result<Option<usize>> {
        let mut from = 0;
        loop {
            if let Some(p) = self.data[from..self.len]
                .windows(4)
                .position(|w| w == b"\r\n\r\n")
            {
                return Ok(Some(from + p + 4));
            }
            from = self.len.saturating_sub(3);
            if self.len >= MAX_HEAD {
                return Err(std::io::ErrorKind::InvalidData.into());
            }
            if self.read_more(s).await? == 0 {
                return Ok(None);
            }
        }
    }
}

fn content_length(headers: &[httparse::Header]) -> Option<usize> {
    let mut cl = None;
    for h in headers {
        if h.name.eq_ignore_ascii_case("transfer-encoding") {
            return None;
        }
        if h.name.eq_ignore_ascii_case("content-length") {
            cl = std::str::from_utf8(h.value).ok()?.trim().parse().ok();
        }
    }
    cl
}

async fn connection(mut client: TcpStream, upstream: SocketAddr) -> std::io::Result<()> {
    let mut up: Option<TcpStream> = None;
    let (mut req, mut resp) = (Buf::new(), Buf::new());
    loop {
        let Some(end) = req.read_head(&mut client).await? else {
            return Ok(());
        };
        {
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut parsed = httparse::Request::new(&mut headers);
            if !matches!(
                parsed.parse(&req.data[..end]),
                Ok(httparse::Status::Complete(_))
            ) || content_length(parsed.headers).unwrap_or(0) != 0
                || parsed
                    .headers
                    .iter()
                    .any(|h| h.name.eq_ignore_ascii_case("transfer-encoding"))
            {
                return Ok(());
            }
        }
        if up.is_none() {
            let s = TcpStream::connect(upstream).await?;
            let _ = s.set_nodelay(true);
            up = Some(s);
        }
        let u = up.as_mut().expect("connected");
        u.write_all(&req.data[..end]).await?;
        req.consume(end);

        let Some(head) = resp.read_head(u).await? else {
            return Ok(());
        };
        let body = {
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut parsed = httparse::Response::new(&mut headers);
            if !matches!(
                parsed.parse(&resp.data[..head]),
                Ok(httparse::Status::Complete(_))
            ) {
                return Ok(());
            }
            let Some(cl) = content_length(parsed.headers) else {
                return Ok(());
            };
            cl
        };
        while resp.len < head + body {
            if resp.read_more(u).await? == 0 {
                return Ok(());
            }
        }
        client.write_all(&resp.data[..head + body]).await?;
        resp.consume(head + body);
    }
}
