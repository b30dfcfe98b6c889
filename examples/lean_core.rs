//! Issue 16's prototype (a): a sequential keep-alive HTTP/1.1 proxy loop over pingora-core's own
//! v1 server and client sessions, without pingora-proxy's state machine, and with no checks.
//! Each client connection keeps one upstream connection for its lifetime (what an upstream pool
//! gives a steady load). It measures the cost of the approach; it is not a proxy to deploy.
//!
//! `cargo run --release --example lean_core -- LISTEN UPSTREAM`

use std::net::SocketAddr;
use std::os::fd::AsRawFd;

use pingora::protocols::http::v1::client::HttpSession as ClientSession;
use pingora::protocols::http::v1::server::HttpSession as ServerSession;
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::{GetSocketDigest, SocketDigest, Stream};
use tokio::net::{TcpListener, TcpStream};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(listen), Some(upstream)) = (args.get(1), args.get(2)) else {
        eprintln!("usage: lean_core LISTEN UPSTREAM");
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
            tokio::spawn(async move {
                let _ = connection(stream(client), upstream).await;
            });
        }
    });
}

fn stream(tcp: TcpStream) -> Stream {
    let _ = tcp.set_nodelay(true);
    let fd = tcp.as_raw_fd();
    let mut l4: L4Stream = tcp.into();
    l4.set_socket_digest(SocketDigest::from_raw_fd(fd));
    Box::new(l4)
}

async fn connection(client: Stream, upstream: SocketAddr) -> pingora::Result<()> {
    let mut next = Some(client);
    let mut up: Option<Stream> = None;
    while let Some(s) = next.take() {
        let mut down = ServerSession::new(s);
        if down.read_request().await?.is_none() {
            return Ok(());
        }
        let u = match up.take() {
            Some(u) => u,
            None => stream(TcpStream::connect(upstream).await.map_err(|e| {
                pingora::Error::because(pingora::ErrorType::ConnectError, "connect", e)
            })?),
        };
        let mut client = ClientSession::new(u);
        client
            .write_request_header(Box::new(down.req_header().clone()))
            .await?;
        while let Some(chunk) = down.read_body_bytes().await? {
            client.write_body(&chunk).await?;
        }
        client.finish_body().await?;
        client.read_response().await?;
        let resp = client.resp_header().expect("read").clone();
        down.write_response_header(Box::new(resp)).await?;
        while let Some(chunk) = client.read_body_bytes().await? {
            down.write_body(&chunk).await?;
        }
        down.finish_body().await?;
        // pingora-proxy applies the response's keep-alive rules itself before reuse
        client.respect_keepalive();
        up = client.reuse().await;
        let keep = down.will_keepalive();
        next = down.reuse().await?.map(|r| r.into_parts().0);
        if std::env::var_os("LEAN_DEBUG").is_some() {
            eprintln!(
                "upstream reused {}, downstream keepalive {keep}",
                up.is_some()
            );
        }
    }
    Ok(())
}
