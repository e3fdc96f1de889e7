//! `weir-bench`: runs the load harness and prints the markdown report (see bench/README.md).

use std::io::Write as _;

use anyhow::Context as _;
use clap::Parser as _;
use weir_bench::harness::{self, Options};

fn main() -> anyhow::Result<()> {
    let options = Options::parse();
    let report = if options.isolation {
        harness::isolation::run(&options)?.to_string()
    } else {
        harness::run(&options)?.to_string()
    };
    if let Some(path) = &options.out {
        std::fs::write(path, &report).with_context(|| format!("writing {}", path.display()))?;
    }
    std::io::stdout().lock().write_all(report.as_bytes())?;
    Ok(())
}
