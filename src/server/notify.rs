//! systemd's readiness protocol (`Type=notify`), through the `sd-notify` crate: nothing is sent
//! unless systemd started the process with `NOTIFY_SOCKET`.
//!
//! - `READY=1` and `MAINPID=<this process>` once the public listener accepts connections. After
//!   a zero-downtime upgrade this comes from the new process, so systemd (with
//!   `NotifyAccess=all`) follows it as the service's main process and does not take the old
//!   one's exit for the service's end.
//! - `STOPPING=1` when a stop (SIGTERM, SIGINT) begins; an upgrade's SIGQUIT only says so in
//!   `STATUS=`, since the service goes on in the new process.

use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use sd_notify::NotifyState;

fn send(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(false, states) {
        tracing::warn!("systemd notification not sent: {e}");
    }
}

/// Tells systemd the gateway serves once `listen` accepts a connection (at most 30 s).
pub(super) fn ready_when_serving(listen: SocketAddr) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    let _ = std::thread::Builder::new()
        .name("vivgate-notify".into())
        .spawn(move || {
            let mut addr = listen;
            if addr.ip().is_unspecified() {
                addr.set_ip(if addr.is_ipv4() {
                    std::net::Ipv4Addr::LOCALHOST.into()
                } else {
                    std::net::Ipv6Addr::LOCALHOST.into()
                });
            }
            let start = Instant::now();
            while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
                if start.elapsed() > Duration::from_secs(30) {
                    tracing::error!(
                        "systemd: {addr} accepts no connection after 30 s; READY not sent"
                    );
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let status = format!("serving on {listen}");
            send(&[
                NotifyState::MainPid(std::process::id()),
                NotifyState::Ready,
                NotifyState::Status(&status),
            ]);
        });
}

/// A graceful stop began.
pub(super) fn stopping() {
    send(&[
        NotifyState::Stopping,
        NotifyState::Status("stopping: draining requests"),
    ]);
}

/// An upgrade began: the new process takes over (and becomes the main process).
pub(super) fn handing_over() {
    send(&[NotifyState::Status(
        "handing the listeners over to the new process",
    )]);
}
