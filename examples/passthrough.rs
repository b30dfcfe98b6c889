//! A bare pingora 0.9 HTTP proxy with no checks: every request goes to one upstream. The load
//! harness (`benches/load/`) runs it beside vivgate, built with the same release profile and
//! allocator, to measure what vivgate's checks cost on top of the framework.
//!
//! `cargo run --release --example passthrough -- LISTEN UPSTREAM [THREADS]`

use std::sync::Arc;

use async_trait::async_trait;
use pingora::prelude::*;
use pingora::proxy::{http_proxy_service, ProxyHttp, Session};
use pingora::server::configuration::ServerConf;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Passthrough {
    upstream: std::net::SocketAddr,
}

#[async_trait]
impl ProxyHttp for Passthrough {
    type CTX = ();
    fn new_ctx(&self) {}

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        let mut peer = HttpPeer::new(self.upstream, false, String::new());
        peer.options.connection_timeout = Some(std::time::Duration::from_secs(2));
        peer.options.read_timeout = Some(std::time::Duration::from_secs(30));
        Ok(Box::new(peer))
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(listen), Some(upstream)) = (args.get(1), args.get(2)) else {
        eprintln!("usage: passthrough LISTEN UPSTREAM [THREADS]");
        std::process::exit(2);
    };
    let upstream = upstream.parse().expect("UPSTREAM is ip:port");
    let threads = args.get(3).and_then(|t| t.parse().ok()).unwrap_or(1);
    let tag: String = listen
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    let conf = ServerConf {
        threads,
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(0),
        pid_file: format!("/tmp/passthrough-{tag}.pid"),
        upgrade_sock: format!("/tmp/passthrough-{tag}.sock"),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let conf = Arc::clone(&server.configuration);
    let mut svc = http_proxy_service(&conf, Passthrough { upstream });
    svc.add_tcp(listen);
    server.add_service(svc);
    server.run_forever();
}
