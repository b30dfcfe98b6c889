//! A real redis-server for tests: started on a free port in a temp dir, stopped on drop.

use std::path::Path;
use std::process::{Child, Command, Stdio};

use super::{free_port, wait_for};

pub struct RedisServer {
    pub child: Child,
    pub port: u16,
    pub dir: tempfile::TempDir,
}

/// A test's own connections to Redis wait this long for an answer (the client's default is
/// 500 ms: too short for a pipeline of thousands of writes that this Redis fsyncs one by one on a
/// busy CI machine).
pub fn patient() -> redis::AsyncConnectionConfig {
    redis::AsyncConnectionConfig::new()
        .set_response_timeout(Some(std::time::Duration::from_secs(30)))
}

impl RedisServer {
    /// A redis-server on a free port, appending every write to its log (so a restart keeps
    /// what it acknowledged). `None` when redis-server is missing and not required.
    pub async fn start() -> Option<RedisServer> {
        if Command::new("redis-server")
            .arg("--version")
            .output()
            .is_err()
        {
            if std::env::var("VIVGATE_REQUIRE_REDIS").as_deref() == Ok("1") {
                panic!("VIVGATE_REQUIRE_REDIS=1 but redis-server is not installed");
            }
            eprintln!("!!! SKIPPED: redis-server is not installed (apt-get install redis-server)");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let port = free_port().await;
        let child = Self::spawn(dir.path(), port);
        let s = RedisServer { child, port, dir };
        s.wait_ready().await;
        Some(s)
    }

    pub fn spawn(dir: &Path, port: u16) -> Child {
        Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
            ])
            .args(["--appendonly", "yes", "--appendfsync", "always"])
            .arg("--dir")
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    }

    pub async fn wait_ready(&self) {
        let url = self.url();
        wait_for("redis-server to answer", || {
            let url = url.clone();
            async move {
                let Ok(c) = redis::Client::open(url) else {
                    return false;
                };
                let Ok(mut con) = c
                    .get_multiplexed_async_connection_with_config(&patient())
                    .await
                else {
                    return false;
                };
                redis::cmd("PING")
                    .query_async::<String>(&mut con)
                    .await
                    .is_ok()
            }
        })
        .await;
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub async fn restart(&mut self) {
        self.kill();
        self.child = Self::spawn(self.dir.path(), self.port);
        self.wait_ready().await;
    }

    pub async fn hget(&self, key: &str, field: &str) -> u64 {
        let c = redis::Client::open(self.url()).unwrap();
        let mut con = c
            .get_multiplexed_async_connection_with_config(&patient())
            .await
            .unwrap();
        redis::cmd("HGET")
            .arg(key)
            .arg(field)
            .query_async::<Option<u64>>(&mut con)
            .await
            .unwrap()
            .unwrap_or(0)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}
