//! `weir-soak`: a bounded soak of a weir binary; prints the markdown report (see bench/README.md)
//! and exits non-zero if any request that could have succeeded failed.

use std::io::Write as _;

use anyhow::Context as _;
use clap::Parser as _;
use weir_bench::soak::{self, Options};

fn main() -> anyhow::Result<()> {
    let options = Options::parse();
    let dir = std::env::temp_dir().join(format!("weir-soak-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let result = runtime.block_on(soak::run(options.clone(), &dir));
    let _ = std::fs::remove_dir_all(&dir);
    let report = result?;
    let text = report.to_string();
    if let Some(path) = &options.out {
        std::fs::write(path, &text).with_context(|| format!("writing {}", path.display()))?;
    }
    std::io::stdout().lock().write_all(text.as_bytes())?;
    if report.failed() > 0 {
        anyhow::bail!("{} request(s) failed that a healthy fallback could have answered", report.failed());
    }
    Ok(())
}
