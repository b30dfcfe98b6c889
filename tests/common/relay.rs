//! A TCP relay between the gateway and Redis that the test can tell to lose a reply: the next
//! chunk the client sends that contains a given byte string is forwarded to Redis (which applies
//! it), then the client's side of the connection is closed before any reply can reach it. Other
//! traffic passes through unchanged. Stops when dropped.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub struct Relay {
    pub addr: SocketAddr,
    armed: Arc<Mutex<Option<Vec<u8>>>>,
    cut: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    pub async fn start(upstream: SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let armed: Arc<Mutex<Option<Vec<u8>>>> = Arc::default();
        let cut = Arc::new(AtomicU64::new(0));
        let (a, c) = (armed.clone(), cut.clone());
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(upstream).await else {
                    continue;
                };
                tokio::spawn(pipe(client, server, a.clone(), c.clone()));
            }
        });
        Relay {
            addr,
            armed,
            cut,
            task,
        }
    }

    /// The next chunk containing `needle` reaches Redis, and its reply is lost.
    pub fn lose_reply_to(&self, needle: &[u8]) {
        *self.armed.lock().unwrap() = Some(needle.to_vec());
    }

    /// How many connections were cut after forwarding a matching chunk.
    pub fn cut(&self) -> u64 {
        self.cut.load(Ordering::SeqCst)
    }

    pub fn url(&self) -> String {
        format!("redis://{}/0", self.addr)
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn pipe(
    client: TcpStream,
    server: TcpStream,
    armed: Arc<Mutex<Option<Vec<u8>>>>,
    cut: Arc<AtomicU64>,
) {
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    // replies flow back until the connection is cut
    let mut back = tokio::spawn(async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match sr.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if cw.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            }
        }
    });
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match cr.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let chunk = &buf[..n];
        let hit = {
            let mut armed = armed.lock().unwrap();
            let hit = armed
                .as_ref()
                .is_some_and(|needle| chunk.windows(needle.len()).any(|w| w == needle));
            if hit {
                *armed = None;
            }
            hit
        };
        if hit {
            // the client's side goes first, so no reply can reach it; Redis gets the command
            // and a moment to apply it before its side closes too
            back.abort();
            let _ = (&mut back).await;
            let _ = sw.write_all(chunk).await;
            cut.fetch_add(1, Ordering::SeqCst);
            drop(cr);
            tokio::time::sleep(Duration::from_millis(100)).await;
            return;
        }
        if sw.write_all(chunk).await.is_err() {
            break;
        }
    }
    back.abort();
}
