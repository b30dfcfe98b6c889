//! The `vivgate` binary as a process: a config for it beside the harness's, started on a port,
//! signalled, waited for, and killed when a test fails.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use tokio::net::TcpStream;

use super::{wait_for, Harness};

impl Harness {
    /// Writes `name` beside the harness config for the real binary: the gateway on
    /// 127.0.0.1:`port`, `server_extra` lines added to `[server]`, `tail` appended; returns its path.
    pub fn binary_config(&self, name: &str, port: u16, server_extra: &str, tail: &str) -> PathBuf {
        let config = self.config_text().replace(
            "listen = \"127.0.0.1:0\"",
            &format!("listen = \"127.0.0.1:{port}\"\n{server_extra}"),
        );
        let path = self.dir.path().join(name);
        std::fs::write(&path, format!("{config}\n{tail}\n")).unwrap();
        path
    }
}

/// The `vivgate` binary, for tests that run it as a process.
pub fn vivgate() -> std::process::Command {
    std::process::Command::new(env!("CARGO_BIN_EXE_vivgate"))
}

/// Kills and reaps the child when dropped, so a failing test leaves no process behind.
pub struct Killer(pub std::process::Child);

impl Drop for Killer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn signal(child: &std::process::Child, sig: i32) {
    // SAFETY: kill(2) on a child we started and have not reaped.
    assert_eq!(unsafe { libc::kill(child.id() as i32, sig) }, 0);
}

/// Runs the binary on `config` with `args` and `env`, and waits until 127.0.0.1:`port` accepts.
pub async fn spawn_binary(
    config: &std::path::Path,
    args: &[&str],
    env: &[(&str, &str)],
    port: u16,
) -> Killer {
    spawn_binary_logging(config, args, env, port, None).await
}

/// Like [`spawn_binary`], with stdout and stderr appended to `log` when given.
pub async fn spawn_binary_logging(
    config: &std::path::Path,
    args: &[&str],
    env: &[(&str, &str)],
    port: u16,
    log: Option<&std::path::Path>,
) -> Killer {
    let out = |l: Option<&std::path::Path>| match l {
        Some(p) => std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
            .unwrap()
            .into(),
        None => std::process::Stdio::null(),
    };
    let child = vivgate()
        .arg("--config")
        .arg(config)
        .args(args)
        .envs(env.iter().copied())
        .stdout(out(log))
        .stderr(out(log))
        .spawn()
        .unwrap();
    let child = Killer(child);
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    wait_for("the binary to listen", || async {
        TcpStream::connect(addr).await.is_ok()
    })
    .await;
    child
}

/// Sends `sig` (none: only waits) and waits, at most `within`, for the process to exit.
pub async fn wait_exit(
    k: &mut Killer,
    sig: Option<i32>,
    within: Duration,
) -> std::process::ExitStatus {
    if let Some(sig) = sig {
        signal(&k.0, sig);
    }
    let start = Instant::now();
    loop {
        if let Some(status) = k.0.try_wait().unwrap() {
            return status;
        }
        assert!(
            start.elapsed() < within,
            "the process did not exit within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
