//! Renders a [`Report`] as markdown: direct vs through Weir, side by side, with Weir's added cost.

use std::fmt::{self, Display, Formatter};
use std::time::Duration;

use super::{Comparison, Latency, Report, Run};

impl Display for Report {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        let o = &self.options;
        writeln!(f, "## weir-bench results\n")?;
        writeln!(
            f,
            "{} CPUs; each run {}; {} keep-alive HTTP/1.1 connections per target; \
             load generator {} thread(s), mock {} thread(s); weir: {}.\n",
            self.cpus,
            humantime::format_duration(o.duration),
            o.connections,
            o.client_threads,
            o.mock_threads,
            match (&o.weir, o.direct_only) {
                (Some(bin), false) => format!("`{}`", bin.display()),
                _ => "not measured (--direct-only)".to_owned(),
            },
        )?;
        writeln!(f, "| workload | metric | direct | weir | weir − direct |")?;
        writeln!(f, "|---|---|---:|---:|---:|")?;
        for comparison in &self.open_loops {
            let mut rows = Rows { f: &mut *f, c: comparison, first: true };
            rows.latency("", |r| r.latency)?;
            rows.rate("achieved rate")?;
            rows.errors()?;
        }
        let mut rows = Rows { f: &mut *f, c: &self.closed_loop, first: true };
        rows.rate("throughput")?;
        rows.latency("", |r| r.latency)?;
        rows.errors()?;
        let mut rows = Rows { f: &mut *f, c: &self.streaming, first: true };
        rows.latency("TTFB ", |r| r.first_byte)?;
        rows.latency("TTLB ", |r| r.latency)?;
        rows.errors()?;

        if let Some(memory) = &self.memory {
            writeln!(f, "\n| weir process | RSS |")?;
            writeln!(f, "|---|---:|")?;
            writeln!(f, "| idle, after start | {} |", mib(memory.idle_kib))?;
            for c in self.comparisons() {
                if let Some(kib) = c.weir_peak_rss_kib {
                    writeln!(f, "| peak during {} | {} |", c.workload, mib(kib))?;
                }
            }
            writeln!(f, "| idle, after load | {} |", mib(memory.after_load_kib))?;
            writeln!(f, "| high-water mark (VmHWM) | {} |", mib(memory.high_water_kib))?;
        }

        let mut heading = false;
        for c in self.comparisons() {
            for (target, run) in [("direct", Some(&c.direct)), ("weir", c.weir.as_ref())] {
                let Some(error) = run.and_then(|r| r.first_error.as_ref()) else { continue };
                if !std::mem::replace(&mut heading, true) {
                    writeln!(f, "\nFirst error of each run that had errors:\n")?;
                }
                writeln!(f, "- {}, {target}: {error}", c.workload)?;
            }
        }
        Ok(())
    }
}

/// Picks one statistic out of a [`Latency`].
type Pick = fn(&Latency) -> Duration;

/// The rows of one workload; its name is written on the first row only.
struct Rows<'a, 'f> {
    f: &'a mut Formatter<'f>,
    c: &'a Comparison,
    first: bool,
}

impl Rows<'_, '_> {
    fn latency(&mut self, prefix: &str, which: fn(&Run) -> Option<Latency>) -> fmt::Result {
        let metrics: [(&str, Pick); 4] =
            [("p50", |l| l.p50), ("p90", |l| l.p90), ("p99", |l| l.p99), ("max", |l| l.max)];
        for (name, pick) in metrics {
            let get = |r: &Run| which(r).as_ref().map(pick);
            let delta = delta_ms(self.c, get);
            self.row(&format!("{prefix}{name}"), |r| get(r).map(ms), delta)?;
        }
        Ok(())
    }

    fn rate(&mut self, metric: &str) -> fmt::Result {
        let direct = self.c.direct.rate;
        let ratio = self.c.weir.as_ref().filter(|_| direct > 0.0).map(|w| format!("×{:.2}", w.rate / direct));
        self.row(metric, |r| Some(format!("{:.0}/s", r.rate)), ratio)
    }

    fn errors(&mut self) -> fmt::Result {
        self.row("errors", |r| Some(format!("{}/{}", r.errors, r.sent)), None)
    }

    fn row(&mut self, metric: &str, cell: impl Fn(&Run) -> Option<String>, delta: Option<String>) -> fmt::Result {
        let workload = if std::mem::take(&mut self.first) { self.c.workload.as_str() } else { "" };
        let dash = || "–".to_owned();
        writeln!(
            self.f,
            "| {workload} | {metric} | {} | {} | {} |",
            cell(&self.c.direct).unwrap_or_else(dash),
            self.c.weir.as_ref().and_then(&cell).unwrap_or_else(dash),
            delta.unwrap_or_default(),
        )
    }
}

fn delta_ms(c: &Comparison, get: impl Fn(&Run) -> Option<Duration>) -> Option<String> {
    let direct = get(&c.direct)?.as_secs_f64();
    let weir = get(c.weir.as_ref()?)?.as_secs_f64();
    Some(format!("{:+.3} ms", (weir - direct) * 1e3))
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1e3)
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}
