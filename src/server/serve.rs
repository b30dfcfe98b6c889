//! vivgate's own accept loop and the applications it runs: the demo's listener, the tests'
//! extra listeners and the built-in backend use it, the production runner uses pingora's.

use std::os::fd::AsRawFd;
use std::sync::Arc;

use pingora::apps::{HttpServerOptions, ServerApp};
use pingora::listeners::tls::Acceptor;
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::{GetSocketDigest, SocketDigest, Stream};
use pingora::proxy::{http_proxy, HttpProxy};
use pingora::server::configuration::ServerConf;
use pingora::server::ShutdownWatch;
use tokio::net::TcpListener;

use crate::front::{Front, ListenerSettings};
use crate::gateway::Gateway;
use crate::proxy::VivGate;

/// The application of a plain listener (vivgate's front, then pingora's proxy), ready for
/// [`serve`].
pub fn proxy_app(gw: Arc<Gateway>) -> Arc<Front> {
    listener_app(gw, ListenerSettings::default())
}

/// The application of a listener with `settings` (PROXY header, TLS, h2c), ready for [`serve`].
pub fn listener_app(gw: Arc<Gateway>, settings: ListenerSettings) -> Arc<Front> {
    let conf = Arc::new(ServerConf::default());
    Arc::new(Front::new(gw.clone(), new_proxy(&conf, &gw), settings))
}

/// The TLS acceptor of the snapshot's listener `listen`: certificates are read from the current
/// snapshot at each handshake, so a reload rotates them.
pub(super) fn tls_acceptor(
    gw: &Arc<Gateway>,
    listen: &str,
    http2: bool,
) -> Result<Acceptor, String> {
    let gw = gw.clone();
    crate::tls::acceptor(
        listen,
        http2,
        Arc::new(move || gw.snapshot().tls_certs.clone()),
    )
}

/// pingora's proxy with vivgate's HTTP/2 limits (from pingora's bounded defaults) and idle
/// timeout. They take effect at start.
pub(super) fn new_proxy(conf: &Arc<ServerConf>, gw: &Arc<Gateway>) -> Arc<HttpProxy<VivGate>> {
    let limits = gw.snapshot().limits;
    let mut proxy = http_proxy(conf, VivGate::new(gw.clone()));
    let mut h2 = pingora::protocols::http::v2::server::default_h2_options();
    h2.max_concurrent_streams(limits.h2_max_concurrent_streams);
    h2.max_header_list_size(limits.h2_max_header_list_bytes);
    proxy.h2_options = Some(h2);
    let mut options = HttpServerOptions::default();
    // the front has already seen the h2c preface before pingora peeks at it again
    options.h2c = true;
    options.h2_idle_timeout = Some(limits.keepalive_timeout);
    proxy.server_options = Some(options);
    Arc::new(proxy)
}

/// Accepts connections on `listener` and hands each to `app` until `shutdown` turns true.
/// Connections already accepted finish on their own tasks.
pub async fn serve<A>(listener: TcpListener, app: Arc<A>, shutdown: ShutdownWatch)
where
    A: ServerApp + Send + Sync + 'static,
{
    serve_counted(listener, app, shutdown, Default::default()).await
}

/// Like [`serve`]; `open` counts the connections being served, so that a stop can wait for
/// the requests in flight. Once `shutdown` is true, a connection ends after its current
/// request instead of waiting for another.
pub async fn serve_counted<A>(
    listener: TcpListener,
    app: Arc<A>,
    mut shutdown: ShutdownWatch,
    open: Arc<std::sync::atomic::AtomicUsize>,
) where
    A: ServerApp + Send + Sync + 'static,
{
    use std::sync::atomic::Ordering;
    struct Open(Arc<std::sync::atomic::AtomicUsize>);
    impl Drop for Open {
        fn drop(&mut self) {
            self.0.fetch_sub(1, Ordering::AcqRel);
        }
    }
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((tcp, _peer)) = accepted else { continue };
                let _ = tcp.set_nodelay(true);
                let fd = tcp.as_raw_fd();
                let mut l4: L4Stream = tcp.into();
                l4.set_socket_digest(SocketDigest::from_raw_fd(fd));
                let stream: Stream = Box::new(l4);
                let app = app.clone();
                let shutdown = shutdown.clone();
                open.fetch_add(1, Ordering::AcqRel);
                let counted = Open(open.clone());
                tokio::spawn(async move {
                    let _counted = counted;
                    let mut next = Some(stream);
                    while let Some(s) = next {
                        next = app.process_new(s, &shutdown).await;
                        if *shutdown.borrow() {
                            break;
                        }
                    }
                });
            }
            changed = shutdown.changed() => {
                if changed.is_err() || *shutdown.borrow() {
                    break;
                }
            }
        }
    }
}
