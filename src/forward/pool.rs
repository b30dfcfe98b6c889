//! Idle upstream connections, kept for reuse: a connection goes back only after a response was
//! read to its end and neither side said `close`, and a connection idle for longer than
//! [`MAX_IDLE`] is not used again.
//!
//! No task watches an idle connection (pingora's pool spawns one per connection put back).
//! Instead a connection is checked with one non-blocking poll when it is taken (see
//! [`still_open`]; no system call when the runtime knows the socket is drained):
//! one the server closed, or one holding bytes nobody asked for (a body after a `HEAD` answer,
//! more bytes than a length said, an unsolicited `408`), is dropped, so such bytes can never be
//! read as the next request's answer. A server may still close between the check and the
//! request: a request that can be sent again (no body, or a body the gateway holds whole) whose
//! reused connection fails before any byte of the answer is retried once on a new one.

use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ahash::AHashMap;
use pingora::connectors::TransportConnector;
use pingora::protocols::Stream;

/// How long a connection may sit idle and still be used (below the common server keep-alive
/// timeouts: nginx 75 s, Apache 5 s is below it and is caught by the retry).
pub const MAX_IDLE: Duration = Duration::from_secs(55);
/// Idle connections kept per server.
pub const MAX_PER_SERVER: usize = 256;

/// A server's pool: its address, and for a TLS upstream the key of its name and CA.
pub type Key = (SocketAddr, u64);

/// A listener's upstream connections: the idle ones, and the connector that makes new ones
/// (TCP, and TLS with verification and SNI). One per listener, as pingora keeps one per
/// service: each service runs on a runtime of its own, and a connection is driven by the
/// reactor of the runtime that opened it.
pub struct Upstreams {
    pub pool: Pool,
    pub connector: TransportConnector,
}

impl Default for Upstreams {
    fn default() -> Self {
        Upstreams {
            pool: Pool::default(),
            connector: TransportConnector::new(None),
        }
    }
}

#[derive(Default)]
pub struct Pool {
    idle: Mutex<AHashMap<Key, Vec<(Stream, Instant)>>>,
}

impl Pool {
    /// The most recently used idle connection to `key`'s server that is young enough and
    /// still open with nothing to read.
    pub fn take(&self, key: &Key) -> Option<Stream> {
        loop {
            let (mut stream, since) = {
                let mut idle = self.idle.lock().ok()?;
                idle.get_mut(key)?.pop()?
            };
            if since.elapsed() > MAX_IDLE {
                // the others under it are older still
                if let Ok(mut idle) = self.idle.lock() {
                    idle.remove(key);
                }
                return None;
            }
            if still_open(&mut stream) {
                return Some(stream);
            }
        }
    }

    /// Keeps `stream` for the next request to `key`'s server.
    pub fn put(&self, key: Key, stream: Stream) {
        let Ok(mut idle) = self.idle.lock() else {
            return;
        };
        let list = idle.entry(key).or_default();
        if list.len() < MAX_PER_SERVER {
            list.push((stream, Instant::now()));
        }
    }
}

/// An idle connection is usable when reading it would block: no end of stream, no error, and
/// no byte from the server, neither in the socket nor in the stream's own read buffer (pingora's
/// L4 stream reads ahead into one, and a TLS stream may hold decrypted bytes). One poll with a
/// waker that does nothing: when the runtime last saw the socket drained, it answers without a
/// system call (a read shorter than asked marks the socket drained); otherwise it reads, and a
/// byte read here means the connection is dropped anyway.
fn still_open(stream: &mut Stream) -> bool {
    use std::task::{Context, Poll, Waker};
    use tokio::io::{AsyncRead, ReadBuf};
    let mut byte = [0u8; 1];
    let mut buf = ReadBuf::new(&mut byte);
    let mut cx = Context::from_waker(Waker::noop());
    matches!(
        std::pin::Pin::new(stream).poll_read(&mut cx, &mut buf),
        Poll::Pending
    )
}
