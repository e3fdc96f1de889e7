//! Runs the whole load harness in `--direct-only` mode, and checks how it fails without a Weir.

use anyhow::{Result, ensure};
use clap::Parser as _;
use weir_bench::harness::{self, Options};

fn options(args: &[&str]) -> Result<Options> {
    Ok(Options::try_parse_from(std::iter::once("weir-bench").chain(args.iter().copied()))?)
}

#[test]
fn direct_only_run_measures_every_workload() -> Result<()> {
    let opts = options(&[
        "--direct-only",
        "--duration",
        "300ms",
        "--rates",
        "100,200",
        "--connections",
        "4",
        "--stream-rate",
        "20",
    ])?;
    let report = harness::run(&opts)?;
    let sent: Vec<usize> = report.open_loops.iter().map(|c| c.direct.sent).collect();
    ensure!(sent == [30, 60], "{sent:?}");
    for c in report.comparisons() {
        ensure!(c.direct.errors == 0, "{}: {:?}", c.workload, c.direct.first_error);
        ensure!(c.weir.is_none() && c.plugins.is_none() && c.direct.latency.is_some());
    }
    ensure!(report.streaming.direct.ok == 6);
    ensure!(report.closed_loop.direct.rate > 0.0 && report.memory.is_none() && report.plugins_memory.is_none());
    ensure!(!report.has_plugins());
    let markdown = report.to_string();
    ensure!(markdown.contains("| open loop, 200 req/s | p50 |"), "{markdown}");
    ensure!(markdown.contains("| closed loop, 4 connections | throughput |"), "{markdown}");
    ensure!(markdown.contains("TTFB p99"), "{markdown}");
    ensure!(markdown.contains("| workload | metric | direct | weir | weir − direct |"), "{markdown}");
    Ok(())
}

#[test]
fn weir_that_never_gets_ready_is_an_error() -> Result<()> {
    let exits = harness::run(&options(&["--weir", "/bin/false", "--duration", "1s"])?);
    let message = format!("{:#}", exits.err().ok_or_else(|| anyhow::anyhow!("no error"))?);
    ensure!(message.contains("exited before it was ready"), "{message}");

    let missing = harness::run(&options(&["--weir", "/nonexistent/weir", "--duration", "1s"])?);
    let message = format!("{:#}", missing.err().ok_or_else(|| anyhow::anyhow!("no error"))?);
    ensure!(message.contains("spawning /nonexistent/weir"), "{message}");
    let leftovers = std::fs::read_dir(std::env::temp_dir())?
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with(&format!("weir-bench-{}-", std::process::id())))
        .count();
    ensure!(leftovers == 0, "temporary config directories left behind");
    Ok(())
}

#[test]
fn weir_is_required_unless_direct_only() {
    assert!(options(&[]).is_err());
    assert!(options(&["--direct-only", "--rates", "0"]).is_err());
    assert!(options(&["--direct-only"]).is_ok_and(|o| o.rates == [500, 1000] && o.connections == 32));
}

#[test]
fn plugin_chain_and_quick_options() -> Result<()> {
    let defaults = options(&["--direct-only"])?;
    ensure!(defaults.plugins == 5 && defaults.plugin.ends_with("weir_test_plugin_noop.wasm") && !defaults.quick);
    ensure!(defaults.resolved().duration == defaults.duration);
    ensure!(options(&["--direct-only", "--plugins", "0"])?.plugins == 0);
    ensure!(options(&["--direct-only", "--plugins", "-1"]).is_err());

    let quick = options(&["--direct-only", "--quick"])?.resolved();
    ensure!(quick.duration == std::time::Duration::from_secs(3) && quick.rates == [500] && quick.stream_rate == 10);
    ensure!(options(&["--direct-only", "--quick", "--duration", "1s"]).is_err());
    Ok(())
}

#[test]
fn missing_plugin_component_is_an_error_before_anything_starts() -> Result<()> {
    let run = harness::run(&options(&["--weir", "/bin/false", "--plugin", "/nonexistent/noop.wasm"])?);
    let message = format!("{:#}", run.err().ok_or_else(|| anyhow::anyhow!("no error"))?);
    ensure!(message.contains("plugin component /nonexistent/noop.wasm not found"), "{message}");
    // Without a chain the component is not needed.
    let run =
        harness::run(&options(&["--weir", "/bin/false", "--plugins", "0", "--plugin", "/nonexistent/noop.wasm"])?);
    let message = format!("{:#}", run.err().ok_or_else(|| anyhow::anyhow!("no error"))?);
    ensure!(message.contains("exited before it was ready"), "{message}");
    Ok(())
}
