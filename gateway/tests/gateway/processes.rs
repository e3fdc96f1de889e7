//! Real processes for the multi-replica and crash tests: a `redis-server` on a free loopback port
//! (each test its own, so a test can stop and restart it without disturbing the others), and
//! `weir serve` children built from this package's own binary.
//!
//! Each test starts its own Redis rather than sharing one started by `.ci/test`: tests run in
//! parallel and some of them stop Redis on purpose, and a server per test also means no state
//! leaks from one test into another. `.ci/test` only installs `redis-server`.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::state_dir;

/// A port nobody listens on now (bound, then released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port()
}

/// A fresh directory under the test state folder.
pub fn temp_dir(name: &str) -> PathBuf {
    let dir = state_dir().join(format!("{name}-{}-{:08x}", std::process::id(), rand::random::<u32>()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// A `redis-server` child, without persistence, killed on drop.
pub struct RedisServer {
    pub port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl RedisServer {
    pub async fn start() -> Self {
        let mut server = Self { port: free_port(), dir: temp_dir("redis"), child: None };
        server.restart().await;
        server
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts it (again) on the same port, and waits until it answers.
    pub async fn restart(&mut self) {
        assert!(self.child.is_none(), "already running");
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start redis-server ({e}): `.ci/test` installs it (apt-get install redis-server)")
            });
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.answers().await {
            assert!(Instant::now() < deadline, "redis-server on port {} did not answer", self.port);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Kills it (SIGKILL: as abrupt as a crash or a network partition).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    async fn answers(&self) -> bool {
        self.connection().await.is_ok()
    }

    /// A connection for the test to read Redis with.
    pub async fn connection(&self) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
        let client = redis::Client::open(self.url())?;
        let mut conn = client.get_multiplexed_async_connection().await?;
        redis::cmd("PING").query_async::<String>(&mut conn).await?;
        Ok(conn)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A `weir serve` child on its own loopback port, killed on drop; its log is in `log`.
pub struct WeirProcess {
    pub addr: SocketAddr,
    pub config: PathBuf,
    pub log: PathBuf,
    child: Option<Child>,
}

/// The `weir` binary of this package (debug or release, whichever the tests were built as).
pub fn weir_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_weir"))
}

impl WeirProcess {
    /// Writes `config` (which must listen on `addr`) to `dir/name.toml`, starts `weir serve` on it
    /// and waits for `/healthz`.
    pub async fn start(dir: &Path, name: &str, addr: SocketAddr, config: &str) -> Self {
        let path = dir.join(format!("{name}.toml"));
        std::fs::write(&path, config).expect("write config");
        let mut weir = Self { addr, config: path, log: dir.join(format!("{name}.log")), child: None };
        weir.restart().await;
        weir
    }

    pub async fn restart(&mut self) {
        assert!(self.child.is_none(), "already running");
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).expect("log file");
        let child = Command::new(weir_bin())
            .arg("serve")
            .arg("--config")
            .arg(&self.config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn weir");
        self.child = Some(child);
        // Compiling the built-in plugins takes a while in a debug build on a busy machine (the
        // compile cache, shared by every test, makes later starts quick).
        let deadline = Instant::now() + Duration::from_secs(180);
        let client = reqwest::Client::new();
        loop {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("weir exited ({status}); its log:\n{}", std::fs::read_to_string(&self.log).unwrap_or_default());
            }
            if client.get(self.url("/healthz")).send().await.is_ok_and(|r| r.status().is_success()) {
                return;
            }
            assert!(Instant::now() < deadline, "weir on {} did not start; log: {}", self.addr, self.log.display());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGKILL: no drain, no flush, no destructor.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().expect("kill -9");
            let _ = child.wait();
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub async fn metrics(&self) -> String {
        reqwest::get(self.url("/metrics")).await.expect("metrics").text().await.expect("metrics text")
    }

    /// `GET /readyz`: status and body.
    pub async fn ready(&self) -> (u16, String) {
        let response = reqwest::get(self.url("/readyz")).await.expect("readyz");
        (response.status().as_u16(), response.text().await.unwrap_or_default())
    }
}

impl Drop for WeirProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// `weir spend --json` over these ledger files: the rows, the total last.
pub fn spend(ledgers: &[&Path]) -> Vec<serde_json::Value> {
    let mut command = Command::new(weir_bin());
    command.arg("spend").arg("--json").arg("--by").arg("key");
    for ledger in ledgers {
        command.arg("--ledger").arg(ledger);
    }
    let out = command.output().expect("weir spend");
    assert!(out.status.success(), "weir spend: {}", String::from_utf8_lossy(&out.stderr));
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).expect("spend json");
    rows.as_array().expect("rows").clone()
}
