//! Loopback ports: one where nothing listens for the test's life, one free a moment ago, and one
//! held until the test listens on it.

use std::net::SocketAddr;

use tokio::net::TcpListener;

/// A port on loopback where nothing listens.
/// A loopback port where nothing listens, for as long as the test process lives: it is held by
/// a socket that is bound but not listening (so a connection is refused) and shares its port
/// with no one (no `SO_REUSEADDR`), so no other test's listener can be given it.
pub async fn dead_addr() -> SocketAddr {
    let r = Reserved::new();
    let a = r.addr;
    std::mem::forget(r);
    a
}

/// A port that was free a moment ago, for a process the test starts (redis-server, the binary).
pub async fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap().port()
}

/// A loopback port held as [`dead_addr`] holds one, until the test releases it to listen there.
pub struct Reserved {
    pub addr: SocketAddr,
    fd: i32,
}

impl Reserved {
    pub fn new() -> Reserved {
        // SAFETY: plain socket calls on a descriptor this function owns; the address structs
        // are sized as the calls expect
        unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
            assert!(fd >= 0, "socket");
            let mut sa: libc::sockaddr_in = std::mem::zeroed();
            sa.sin_family = libc::AF_INET as libc::sa_family_t;
            sa.sin_addr.s_addr = u32::from_ne_bytes([127, 0, 0, 1]);
            let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            let r = libc::bind(
                fd,
                &sa as *const libc::sockaddr_in as *const libc::sockaddr,
                len,
            );
            assert_eq!(r, 0, "bind");
            let mut got: libc::sockaddr_in = std::mem::zeroed();
            let mut got_len = len;
            let r = libc::getsockname(
                fd,
                &mut got as *mut libc::sockaddr_in as *mut libc::sockaddr,
                &mut got_len,
            );
            assert_eq!(r, 0, "getsockname");
            Reserved {
                addr: SocketAddr::from(([127, 0, 0, 1], u16::from_be(got.sin_port))),
                fd,
            }
        }
    }

    /// Frees the port (to listen on it right away).
    pub fn release(self) -> SocketAddr {
        self.addr
    }
}

impl Drop for Reserved {
    fn drop(&mut self) {
        // SAFETY: closes the descriptor this value owns, once
        unsafe {
            libc::close(self.fd);
        }
    }
}
