//! `weir-bench --isolation`: what hostile plugins on other models cost a model with no plugin.
//!
//! One `weir serve` with the bench model (no plugin) and one model per hostile fixture (a busy
//! loop, a memory bomb, a trap, a host-import hammer), each with that plugin alone. The healthy
//! model gets an open loop at `--rates`' first rate in three conditions, one after the other:
//! alone (baseline); beside a one-core CPU hog in another process (the control: what losing a
//! core costs); and beside an open loop of requests to the hostile models (the attack). The attack
//! is within the goal when its p99 is at most twice the control's.

use std::fmt::Write as _;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, Result};

use super::load::{self, Latency, Run, Target, Workload};
use super::weir::{self, Chain, HOSTILE, Weir};
use super::{Options, WARM_UP, runtime};
use crate::mock::MockUpstream;

/// The three conditions the healthy model is measured in.
#[derive(Debug)]
pub struct Isolation {
    pub rate: u32,
    pub attack_rate: u32,
    pub deadline: Duration,
    pub duration: Duration,
    pub baseline: Run,
    pub control: Run,
    pub attack: Run,
    /// The hostile models' own runs during the attack, by fixture.
    pub hostile: Vec<(&'static str, Run)>,
}

/// A process that spins one core until dropped.
struct Hog(Child);

impl Hog {
    fn start() -> Result<Self> {
        let child = Command::new("sh")
            .args(["-c", "while :; do :; done"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .context("starting the CPU hog (sh)")?;
        Ok(Self(child))
    }
}

impl Drop for Hog {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn run(options: &Options) -> Result<Isolation> {
    let options = options.resolved();
    let bin = options.weir.as_deref().context("--isolation needs --weir")?;
    let rate = options.rates[0];
    for name in &options.hostile {
        let known = HOSTILE.iter().map(|(n, _)| *n).collect::<Vec<_>>();
        anyhow::ensure!(known.contains(&name.as_str()), "--hostile {name:?}: not one of {known:?}");
    }
    let mock_runtime = runtime("weir-bench-mock", options.mock_threads)?;
    let client_runtime = runtime("weir-bench-client", options.client_threads)?;
    let mock = mock_runtime
        .block_on(MockUpstream::builder().record_requests(false).try_start())
        .context("starting the mock upstream")?;
    let chain = Chain::Hostile { deadline: options.hostile_deadline };
    eprintln!("starting {} with the hostile fixtures on their own models", bin.display());
    let gateway = client_runtime.block_on(Weir::start(bin, &mock.base_url(), Some(&chain)))?;
    let result = client_runtime.block_on(async {
        let connections = options.connections;
        let healthy = Target::new("healthy", gateway.addr(), weir::MODEL, weir::STREAM_MODEL, connections);
        healthy.preflight().await?;
        load::closed_loop(&healthy, Workload::Chat, connections, WARM_UP).await;
        // Enough connections per hostile model for its open loop to keep its rate when every
        // request waits the gateway's wall limit for a plugin call that cannot get its turn (the
        // deadline plus the longer of itself and 1 s, `gateway/src/plugins/clock.rs`): fewer, and
        // the requests would queue in this client instead.
        let wall_limit = options.hostile_deadline + options.hostile_deadline.max(Duration::from_secs(1));
        let hostile_connections = (f64::from(options.attack_rate) * wall_limit.as_secs_f64()).ceil() as usize + 8;
        let hostile: Vec<(&'static str, Target)> = HOSTILE
            .iter()
            .filter(|(name, _)| options.hostile.iter().any(|h| h == name))
            .map(|(name, _)| {
                let model = format!("hostile-{name}");
                (*name, Target::new("hostile", gateway.addr(), &model, &model, hostile_connections))
            })
            .collect();

        eprintln!("isolation: baseline, {rate} req/s");
        let baseline = load::open_loop(&healthy, Workload::Chat, rate, options.duration).await;
        tokio::time::sleep(Duration::from_millis(300)).await;

        eprintln!("isolation: control, {rate} req/s beside a one-core CPU hog");
        let hog = Hog::start()?;
        tokio::time::sleep(Duration::from_millis(200)).await;
        let control = load::open_loop(&healthy, Workload::Chat, rate, options.duration).await;
        drop(hog);
        tokio::time::sleep(Duration::from_millis(300)).await;

        eprintln!("isolation: attack, {rate} req/s beside {} req/s to each hostile model", options.attack_rate);
        let attacks = hostile
            .iter()
            .map(|(name, target)| async move {
                (*name, load::open_loop(target, Workload::Chat, options.attack_rate, options.duration).await)
            })
            .collect::<Vec<_>>();
        let (attack, hostile_runs) = tokio::join!(
            async {
                // The hostile load starts first, so the whole measured run is under attack.
                tokio::time::sleep(Duration::from_millis(200)).await;
                load::open_loop(&healthy, Workload::Chat, rate, options.duration).await
            },
            futures_util::future::join_all(attacks),
        );
        anyhow::Ok(Isolation {
            rate,
            attack_rate: options.attack_rate,
            deadline: options.hostile_deadline,
            duration: options.duration,
            baseline,
            control,
            attack,
            hostile: hostile_runs,
        })
    });
    drop(gateway);
    drop(mock);
    result
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1e3)
}

impl std::fmt::Display for Isolation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{} CPUs; healthy model (no plugin) at {} req/s for {:?} per condition; attack: {} req/s to each of {} hostile models (plugin deadline {:?}, quarantine off).\n",
            std::thread::available_parallelism().map_or(1, usize::from),
            self.rate,
            self.duration,
            self.attack_rate,
            self.hostile.len(),
            self.deadline,
        );
        let _ = writeln!(out, "| healthy model | p50 | p90 | p99 | max | errors |");
        let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|");
        for (name, run) in [
            ("alone", &self.baseline),
            ("beside a 1-core CPU hog (control)", &self.control),
            ("under attack", &self.attack),
        ] {
            let l = run.latency.unwrap_or(Latency {
                p50: Duration::ZERO,
                p90: Duration::ZERO,
                p99: Duration::ZERO,
                max: Duration::ZERO,
            });
            let _ = writeln!(
                out,
                "| {name} | {} | {} | {} | {} | {}/{} |",
                ms(l.p50),
                ms(l.p90),
                ms(l.p99),
                ms(l.max),
                run.errors,
                run.sent
            );
        }
        if let (Some(attack), Some(control)) = (self.attack.latency, self.control.latency) {
            let _ = writeln!(
                out,
                "\np99 under attack / p99 beside the hog: ×{:.2} (goal: ≤ ×2).",
                attack.p99.as_secs_f64() / control.p99.as_secs_f64().max(1e-9)
            );
        }
        let _ = writeln!(out, "\n| hostile model | answered | errors | p50 | p99 |");
        let _ = writeln!(out, "|---|---:|---:|---:|---:|");
        for (name, run) in &self.hostile {
            let (p50, p99) = run.latency.map_or(("—".into(), "—".into()), |l| (ms(l.p50), ms(l.p99)));
            let _ = writeln!(out, "| hostile-{name} | {}/{} | {} | {p50} | {p99} |", run.ok, run.sent, run.errors);
        }
        f.write_str(&out)
    }
}
