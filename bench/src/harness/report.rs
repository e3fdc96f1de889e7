//! Renders a [`Report`] as markdown: direct vs through Weir vs through Weir with the plugin chain,
//! side by side, with what Weir adds (weir − direct) and what the chain adds (weir+plugins − weir).

use std::fmt::{self, Display, Formatter};
use std::time::Duration;

use super::{Comparison, Latency, Memory, Report, Run, Through};

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
        let plugins = self.has_plugins();
        if plugins {
            let chain = if o.builtins { "weir+built-ins".to_owned() } else { format!("weir+{} plugins", o.plugins) };
            if o.builtins {
                let names: Vec<&str> = crate::harness::weir::BUILTIN_CHAIN.iter().map(|(n, _)| *n).collect();
                write!(f, "Third target: a second weir whose default chain is the built-in policies {names:?}")?;
                if let Some(url) = &o.redis {
                    write!(f, ", their state in Redis ({url})")?;
                }
            } else {
                write!(
                    f,
                    "Third target: a second weir whose default chain is {} × `{}`",
                    o.plugins,
                    o.plugin.display()
                )?;
            }
            match self.hook_calls_per_request {
                Some(calls) => writeln!(f, "; it made {calls:.2} hook calls per measured request.\n")?,
                None => writeln!(f, ".\n")?,
            }
            writeln!(f, "| workload | metric | direct | weir | {chain} | weir − direct | {chain} − weir |")?;
            writeln!(f, "|---|---|---:|---:|---:|---:|---:|")?;
        } else {
            writeln!(f, "| workload | metric | direct | weir | weir − direct |")?;
            writeln!(f, "|---|---|---:|---:|---:|")?;
        }
        for comparison in &self.open_loops {
            let mut rows = Rows { f: &mut *f, c: comparison, plugins, first: true };
            rows.latency("", |r| r.latency)?;
            rows.rate("achieved rate")?;
            rows.errors()?;
        }
        let mut rows = Rows { f: &mut *f, c: &self.closed_loop, plugins, first: true };
        rows.rate("throughput")?;
        rows.latency("", |r| r.latency)?;
        rows.errors()?;
        let mut rows = Rows { f: &mut *f, c: &self.streaming, plugins, first: true };
        rows.latency("TTFB ", |r| r.first_byte)?;
        rows.latency("TTLB ", |r| r.latency)?;
        rows.errors()?;
        if let Some(predictions) = &self.predictions {
            let mut rows = Rows { f: &mut *f, c: predictions, plugins, first: true };
            rows.latency("", |r| r.latency)?;
            rows.rate("achieved rate")?;
            rows.errors()?;
        }

        self.memory_table(f)?;

        let mut heading = false;
        for c in self.comparisons() {
            let through = [("weir", &c.weir), ("weir+plugins", &c.plugins)];
            let runs = through.into_iter().map(|(target, t)| (target, t.as_ref().map(|t| &t.run)));
            for (target, run) in std::iter::once(("direct", Some(&c.direct))).chain(runs) {
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

impl Report {
    /// Each Weir's resident set: at rest, at its peak during each workload, and its high-water mark.
    fn memory_table(&self, f: &mut Formatter<'_>) -> fmt::Result {
        let Some(memory) = &self.memory else { return Ok(()) };
        let plugins = self.plugins_memory.as_ref();
        match plugins {
            Some(_) => {
                let chain = if self.options.builtins {
                    "built-ins".to_owned()
                } else {
                    format!("{} plugins", self.options.plugins)
                };
                writeln!(f, "\n| weir process | RSS, weir | RSS, weir+{chain} |")?;
                writeln!(f, "|---|---:|---:|")?;
            }
            None => {
                writeln!(f, "\n| weir process | RSS |")?;
                writeln!(f, "|---|---:|")?;
            }
        }
        let mut row = |label: &str, weir: Option<u64>, with_plugins: Option<u64>| {
            let cell = |kib: Option<u64>| kib.map_or_else(|| "–".to_owned(), mib);
            match plugins {
                Some(_) => writeln!(f, "| {label} | {} | {} |", cell(weir), cell(with_plugins)),
                None => writeln!(f, "| {label} | {} |", cell(weir)),
            }
        };
        let at = |pick: fn(&Memory) -> u64| (Some(pick(memory)), plugins.map(pick));
        let (weir, with_plugins) = at(|m| m.idle_kib);
        row("idle, after start", weir, with_plugins)?;
        for c in self.comparisons() {
            let peak = |t: &Option<Through>| t.as_ref().and_then(|t| t.peak_rss_kib);
            if c.weir.is_some() || c.plugins.is_some() {
                row(&format!("peak during {}", c.workload), peak(&c.weir), peak(&c.plugins))?;
            }
        }
        let (weir, with_plugins) = at(|m| m.after_load_kib);
        row("idle, after load", weir, with_plugins)?;
        let (weir, with_plugins) = at(|m| m.high_water_kib);
        row("high-water mark (VmHWM)", weir, with_plugins)
    }
}

/// Picks one statistic out of a [`Latency`].
type Pick = fn(&Latency) -> Duration;

/// The rows of one workload; its name is written on the first row only.
struct Rows<'a, 'f> {
    f: &'a mut Formatter<'f>,
    c: &'a Comparison,
    /// Whether the table has the plugin chain's two columns.
    plugins: bool,
    first: bool,
}

impl Rows<'_, '_> {
    fn latency(&mut self, prefix: &str, which: fn(&Run) -> Option<Latency>) -> fmt::Result {
        let metrics: [(&str, Pick); 4] =
            [("p50", |l| l.p50), ("p90", |l| l.p90), ("p99", |l| l.p99), ("max", |l| l.max)];
        for (name, pick) in metrics {
            let get = |r: &Run| which(r).as_ref().map(pick);
            let delta = |base: Option<&Run>, over: Option<&Run>| {
                let base = get(base?)?.as_secs_f64();
                let over = get(over?)?.as_secs_f64();
                Some(format!("{:+.3} ms", (over - base) * 1e3))
            };
            let (direct, weir, plugins) = runs(self.c);
            let deltas = [delta(Some(direct), weir), delta(weir, plugins)];
            self.row(&format!("{prefix}{name}"), |r| get(r).map(ms), deltas)?;
        }
        Ok(())
    }

    fn rate(&mut self, metric: &str) -> fmt::Result {
        let ratio = |base: Option<&Run>, over: Option<&Run>| {
            let (base, over) = (base?.rate, over?.rate);
            (base > 0.0).then(|| format!("×{:.2}", over / base))
        };
        let (direct, weir, plugins) = runs(self.c);
        let ratios = [ratio(Some(direct), weir), ratio(weir, plugins)];
        self.row(metric, |r| Some(format!("{:.0}/s", r.rate)), ratios)
    }

    fn errors(&mut self) -> fmt::Result {
        self.row("errors", |r| Some(format!("{}/{}", r.errors, r.sent)), [None, None])
    }

    /// One row; `deltas` are weir against direct, and the chain's Weir against the plain one.
    fn row(
        &mut self,
        metric: &str,
        cell: impl Fn(&Run) -> Option<String>,
        [weir_delta, chain_delta]: [Option<String>; 2],
    ) -> fmt::Result {
        let workload = if std::mem::take(&mut self.first) { self.c.workload.as_str() } else { "" };
        let (direct, weir, plugins) = runs(self.c);
        let cell = |run: Option<&Run>| run.and_then(&cell).unwrap_or_else(|| "–".to_owned());
        write!(self.f, "| {workload} | {metric} | {} | {} |", cell(Some(direct)), cell(weir))?;
        if self.plugins {
            write!(self.f, " {} |", cell(plugins))?;
        }
        write!(self.f, " {} |", weir_delta.unwrap_or_default())?;
        if self.plugins {
            write!(self.f, " {} |", chain_delta.unwrap_or_default())?;
        }
        writeln!(self.f)
    }
}

/// A workload's runs direct, through Weir, and through Weir with the plugin chain.
fn runs(c: &Comparison) -> (&Run, Option<&Run>, Option<&Run>) {
    (&c.direct, c.weir.as_ref().map(|t| &t.run), c.plugins.as_ref().map(|t| &t.run))
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1e3)
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}
