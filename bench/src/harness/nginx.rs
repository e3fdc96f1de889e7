//! nginx as a plain reverse proxy in front of the same mock: the yardstick for what a proxy hop
//! costs on this machine. Started from a generated config on a loopback port, one worker process
//! per core (as `worker_processes auto` would), keep-alive connections to the upstream, no access
//! log, and responses relayed as they arrive (`proxy_buffering off`), as Weir relays streams.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

use super::weir::{ConfigDir, Sampler, free_loopback_addr, proc_cpu, proc_memory};

/// How long nginx may take to accept connections on its port.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// A running nginx (master and workers), stopped on drop.
#[derive(Debug)]
pub struct Nginx {
    child: Child,
    addr: SocketAddr,
    /// The master's pid and its workers', read from `/proc` once they are all up (scanning
    /// `/proc` at every sample would cost the bench's own process, which shares the cores).
    pids: Vec<u32>,
    sampler: Sampler,
    _dir: ConfigDir,
}

/// Why there is no nginx target: the note the report prints instead of its column.
#[derive(Debug, Clone)]
pub struct Skipped(pub String);

impl Nginx {
    /// Starts `bin` in front of `upstream` with `workers` worker processes. `Ok(Err(_))` when
    /// `bin` is not installed: the run goes on without the nginx target.
    pub async fn start(bin: &Path, upstream: SocketAddr, workers: usize) -> Result<Result<Self, Skipped>> {
        let addr = free_loopback_addr()?;
        let dir = ConfigDir::create()?;
        let path = dir.path().join("nginx.conf");
        std::fs::write(&path, config(addr, upstream, workers, dir.path())?)
            .with_context(|| format!("writing {}", path.display()))?;
        let spawned = Command::new(bin)
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&path)
            // Where nginx logs before it has read the config (by default /var/log/nginx).
            .arg("-e")
            .arg(dir.path().join("error.log"))
            .stdin(Stdio::null())
            .stdout(std::io::stderr())
            .stderr(std::io::stderr())
            .spawn();
        let mut child = match spawned {
            Ok(child) => child,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Err(Skipped(format!(
                    "nginx not measured: `{}` is not installed (on Debian or Ubuntu: `apt-get install nginx`)",
                    bin.display()
                ))));
            }
            Err(err) => return Err(err).with_context(|| format!("spawning {}", bin.display())),
        };
        let pids = match wait_ready(&mut child, addr, workers, dir.path()).await {
            Ok(pids) => pids,
            Err(e) => {
                stop(&mut child);
                return Err(e);
            }
        };
        let sampled = pids.clone();
        let sampler = Sampler::start(move || rss_kib(&sampled));
        Ok(Ok(Self { child, addr, pids, sampler, _dir: dir }))
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl super::Proxy for Nginx {
    fn cpu(&self) -> Option<Duration> {
        self.pids.iter().map(|&pid| proc_cpu(pid)).sum::<Result<Duration>>().ok()
    }

    fn reset_peak_rss(&self) {
        self.sampler.reset();
    }

    fn peak_rss_kib(&self) -> Option<u64> {
        self.sampler.peak()
    }

    fn rss_kib(&self) -> Result<u64> {
        rss_kib(&self.pids)
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        self.sampler.stop();
        stop(&mut self.child);
    }
}

/// Waits until the master has forked every worker and the port accepts connections; the pids of
/// the master and its workers.
async fn wait_ready(child: &mut Child, addr: SocketAddr, workers: usize, dir: &Path) -> Result<Vec<u32>> {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if let Some(status) = child.try_wait()? {
            let log = std::fs::read_to_string(dir.join("error.log")).unwrap_or_default();
            bail!("nginx exited before it was ready ({status}): {log}");
        }
        let pids = group_pids(child.id());
        if pids.len() > workers && tokio::net::TcpStream::connect(addr).await.is_ok() {
            return Ok(pids);
        }
        if Instant::now() >= deadline {
            bail!("nginx did not accept connections on {addr} within {READY_TIMEOUT:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Stops nginx and its workers.
fn stop(child: &mut Child) {
    // SIGTERM is nginx's fast shutdown: the master stops its workers, then exits. A master
    // killed outright would leave its workers serving. (std has no way to send a signal
    // other than SIGKILL, and the workspace has no unsafe code for libc's `kill`.)
    let master = child.id();
    let _ = Command::new("kill").arg("-TERM").arg(master.to_string()).status();
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    for pid in group_pids(master).into_iter().skip(1) {
        let _ = Command::new("kill").arg("-KILL").arg(pid.to_string()).status();
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// The resident sets of `pids`, summed.
fn rss_kib(pids: &[u32]) -> Result<u64> {
    pids.iter().map(|&pid| Ok(proc_memory(pid)?.rss_kib)).sum()
}

/// The master's pid first, then those of its children (the workers), from `/proc`.
fn group_pids(master: u32) -> Vec<u32> {
    let mut pids = vec![master];
    let Ok(entries) = std::fs::read_dir("/proc") else { return pids };
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        // The command name (field 2) may hold spaces and parentheses; the fields after its
        // closing parenthesis are plain: state, then the parent's pid.
        let ppid = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok());
        if ppid == Some(master) {
            pids.push(pid);
        }
    }
    pids
}

/// The nginx config: one server on `listen` proxying everything to `upstream` over a pool of
/// keep-alive HTTP/1.1 connections; pid file, logs and temporary files all under `prefix`.
fn config(listen: SocketAddr, upstream: SocketAddr, workers: usize, prefix: &Path) -> Result<String> {
    let prefix = prefix.to_str().with_context(|| format!("{} is not UTF-8", prefix.display()))?;
    Ok(format!(
        r#"daemon off;
master_process on;
worker_processes {workers};
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;

events {{
    worker_connections 4096;
}}

http {{
    access_log off;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    keepalive_requests 1000000;

    upstream mock {{
        server {upstream};
        keepalive 128;
    }}

    server {{
        listen {listen};
        location / {{
            proxy_pass http://mock;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
        }}
    }}
}}
"#
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_proxies_to_the_upstream_with_keep_alive() {
        let listen = SocketAddr::from(([127, 0, 0, 1], 4001));
        let upstream = SocketAddr::from(([127, 0, 0, 1], 4002));
        let text = config(listen, upstream, 2, Path::new("/tmp/x")).unwrap_or_else(|e| panic!("{e:#}"));
        for line in [
            "worker_processes 2;",
            "listen 127.0.0.1:4001;",
            "server 127.0.0.1:4002;",
            "keepalive 128;",
            "proxy_http_version 1.1;",
            "proxy_set_header Connection \"\";",
            "proxy_buffering off;",
            "pid /tmp/x/nginx.pid;",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
    }

    #[tokio::test]
    async fn a_missing_nginx_is_skipped_with_a_note() {
        let upstream = SocketAddr::from(([127, 0, 0, 1], 9));
        let started = Nginx::start(Path::new("/nonexistent/nginx"), upstream, 1).await;
        let Ok(Err(Skipped(note))) = started else { panic!("expected a skip, got {started:?}") };
        assert!(note.contains("apt-get install nginx"), "{note}");
    }
}
