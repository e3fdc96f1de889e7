//! Renders a [`Report`] as markdown: direct vs through nginx vs through Weir vs through Weir with
//! the plugin chain, side by side, with what Weir adds (weir − direct) and what the chain adds
//! (weir+plugins − weir), each proxy's CPU per response, and a summary against nginx.

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
        let nginx = self.has_nginx();
        if let Some(note) = &self.nginx_skipped {
            writeln!(f, "{note}.\n")?;
        }
        let nginx_header = if nginx { " nginx |" } else { "" };
        let nginx_rule = if nginx { "---:|" } else { "" };
        if plugins {
            let chain = self.chain_name();
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
            writeln!(
                f,
                "| workload | metric | direct |{nginx_header} weir | {chain} | weir − direct | {chain} − weir |"
            )?;
            writeln!(f, "|---|---|---:|{nginx_rule}---:|---:|---:|---:|")?;
        } else {
            writeln!(f, "| workload | metric | direct |{nginx_header} weir | weir − direct |")?;
            writeln!(f, "|---|---|---:|{nginx_rule}---:|---:|")?;
        }
        for comparison in &self.open_loops {
            let mut rows = Rows { f: &mut *f, c: comparison, plugins, nginx, first: true };
            rows.latency("", |r| r.latency)?;
            rows.rate("achieved rate")?;
            rows.cpu()?;
            rows.errors()?;
        }
        let mut rows = Rows { f: &mut *f, c: &self.closed_loop, plugins, nginx, first: true };
        rows.rate("throughput")?;
        rows.latency("", |r| r.latency)?;
        rows.cpu()?;
        rows.errors()?;
        let mut rows = Rows { f: &mut *f, c: &self.streaming, plugins, nginx, first: true };
        rows.latency("TTFB ", |r| r.first_byte)?;
        rows.latency("TTLB ", |r| r.latency)?;
        rows.cpu()?;
        rows.errors()?;
        let mut rows = Rows { f: &mut *f, c: &self.closed_streams, plugins, nginx, first: true };
        rows.rate("throughput")?;
        rows.latency("TTFB ", |r| r.first_byte)?;
        rows.latency("TTLB ", |r| r.latency)?;
        rows.cpu()?;
        rows.errors()?;
        if let Some(predictions) = &self.predictions {
            let mut rows = Rows { f: &mut *f, c: predictions, plugins, nginx, first: true };
            rows.latency("", |r| r.latency)?;
            rows.rate("achieved rate")?;
            rows.cpu()?;
            rows.errors()?;
        }

        self.memory_table(f)?;
        self.against_nginx(f)?;

        let mut heading = false;
        for c in self.comparisons() {
            let through = [("nginx", &c.nginx), ("weir", &c.weir), ("weir+plugins", &c.plugins)];
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
    /// Whether the nginx target was measured.
    fn has_nginx(&self) -> bool {
        self.comparisons().any(|c| c.nginx.is_some())
    }

    /// The third target's column name.
    fn chain_name(&self) -> String {
        if self.options.builtins {
            "weir+built-ins".to_owned()
        } else {
            format!("weir+{} plugins", self.options.plugins)
        }
    }

    /// The figures of the performance goal, read off one table: each proxy against nginx.
    fn against_nginx(&self, f: &mut Formatter<'_>) -> fmt::Result {
        if !self.has_nginx() || self.memory.is_none() {
            return Ok(());
        }
        let plugins = self.has_plugins();
        let chain = self.chain_name();
        writeln!(f, "\n### Against nginx\n")?;
        write!(f, "| figure | direct | nginx | weir | weir / nginx |")?;
        if plugins {
            write!(f, " {chain} | {chain} / nginx |")?;
        }
        writeln!(f, "\n|---|---:|---:|---:|---:|{}", if plugins { "---:|---:|" } else { "" })?;

        type Figure = fn(&Comparison, Option<&Through>) -> Option<f64>;
        let mut row = |label: &str, c: &Comparison, figure: Figure, unit: fn(f64) -> String, ratio: bool| {
            let cell = |v: Option<f64>| v.map_or_else(|| "–".to_owned(), unit);
            let nginx = figure(c, c.nginx.as_ref());
            let versus = |v: Option<f64>| match (v, nginx) {
                (Some(v), Some(n)) if ratio && n > 0.0 => format!("×{:.2}", v / n),
                _ => String::new(),
            };
            let weir = figure(c, c.weir.as_ref());
            write!(f, "| {label} | {} | {} | {} | {} |", cell(figure(c, None)), cell(nginx), cell(weir), versus(weir))?;
            if plugins {
                let chained = figure(c, c.plugins.as_ref());
                write!(f, " {} | {} |", cell(chained), versus(chained))?;
            }
            writeln!(f)
        };
        let cpu_ms = |_: &Comparison, t: Option<&Through>| Some(t?.cpu_per_response()?.as_secs_f64() * 1e3);
        let rate = |c: &Comparison, t: Option<&Through>| Some(t.map_or(&c.direct, |t| &t.run).rate);
        let per_event = |_: &Comparison, t: Option<&Through>| {
            let t = t?;
            let events = t.run.events_per_response;
            (events > 0.0).then(|| t.cpu_per_response().map(|cpu| cpu.as_secs_f64() * 1e3 / events))?
        };
        let added_p99 = |c: &Comparison, t: Option<&Through>| {
            let p99 = |r: &Run| r.latency.map(|l| l.p99.as_secs_f64() * 1e3);
            Some(p99(&t?.run)? - p99(&c.direct)?)
        };
        let ms3 = |v: f64| format!("{v:.3} ms");
        let per_s = |v: f64| format!("{v:.0}/s");
        let plus_ms = |v: f64| format!("{v:+.3} ms");
        row("proxy CPU per request, closed loop", &self.closed_loop, cpu_ms, ms3, true)?;
        row("max requests/s, closed loop", &self.closed_loop, rate, per_s, true)?;
        if let Some(open) = self.open_loops.last() {
            row(&format!("added p99, {}", open.workload), open, added_p99, plus_ms, false)?;
        }
        let events = self.closed_streams.nginx.as_ref().map_or(0.0, |t| t.run.events_per_response);
        row(
            &format!("proxy CPU per stream ({events:.0} events), back to back"),
            &self.closed_streams,
            cpu_ms,
            ms3,
            true,
        )?;
        row("proxy CPU per streamed event", &self.closed_streams, per_event, ms3, true)?;
        row("max streams/s, back to back", &self.closed_streams, rate, per_s, true)?;
        let peak = |t: Option<&Through>| t.and_then(|t| t.peak_rss_kib);
        let highest =
            |pick: fn(&Comparison) -> Option<&Through>| self.comparisons().filter_map(|c| peak(pick(c))).max();
        let idle_peak = |idle: Option<u64>, peak: Option<u64>| {
            format!("{} / {}", idle.map_or_else(|| "–".to_owned(), mib), peak.map_or_else(|| "–".to_owned(), mib))
        };
        write!(
            f,
            "| RSS idle / peak | – | {} | {} | |",
            idle_peak(self.nginx_idle_kib, highest(|c| c.nginx.as_ref())),
            idle_peak(self.memory.as_ref().map(|m| m.idle_kib), highest(|c| c.weir.as_ref())),
        )?;
        if plugins {
            write!(
                f,
                " {} | |",
                idle_peak(self.plugins_memory.as_ref().map(|m| m.idle_kib), highest(|c| c.plugins.as_ref()))
            )?;
        }
        writeln!(f)
    }

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
    /// Whether the table has nginx's column.
    nginx: bool,
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
            self.row(&format!("{prefix}{name}"), |r, _| get(r).map(ms), deltas)?;
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
        self.row(metric, |r, _| Some(format!("{:.0}/s", r.rate)), ratios)
    }

    /// The proxy's CPU time per successful response (nothing for direct: the mock shares the
    /// bench's process), with the ratios weir / nginx and the chain's Weir / the plain one.
    fn cpu(&mut self) -> fmt::Result {
        let cpu = |t: Option<&Through>| t?.cpu_per_response();
        let ratio = |base: Option<Duration>, over: Option<Duration>| {
            let (base, over) = (base?.as_secs_f64(), over?.as_secs_f64());
            (base > 0.0).then(|| format!("×{:.2}", over / base))
        };
        let (nginx, weir, plugins) =
            (cpu(self.c.nginx.as_ref()), cpu(self.c.weir.as_ref()), cpu(self.c.plugins.as_ref()));
        let ratios = [ratio(nginx, weir).map(|r| format!("{r} of nginx")), ratio(weir, plugins)];
        self.row("proxy CPU per response", |_, t| cpu(t).map(|d| format!("{:.3} ms", d.as_secs_f64() * 1e3)), ratios)
    }

    fn errors(&mut self) -> fmt::Result {
        self.row("errors", |r, _| Some(format!("{}/{}", r.errors, r.sent)), [None, None])
    }

    /// One row; `cell` gets a target's run and, through a proxy, that proxy's measurement;
    /// `deltas` are weir against direct, and the chain's Weir against the plain one.
    fn row(
        &mut self,
        metric: &str,
        cell: impl Fn(&Run, Option<&Through>) -> Option<String>,
        [weir_delta, chain_delta]: [Option<String>; 2],
    ) -> fmt::Result {
        let workload = if std::mem::take(&mut self.first) { self.c.workload.as_str() } else { "" };
        let through =
            |t: &Option<Through>| t.as_ref().and_then(|t| cell(&t.run, Some(t))).unwrap_or_else(|| "–".to_owned());
        let direct = cell(&self.c.direct, None).unwrap_or_else(|| "–".to_owned());
        write!(self.f, "| {workload} | {metric} | {direct} |")?;
        if self.nginx {
            write!(self.f, " {} |", through(&self.c.nginx))?;
        }
        write!(self.f, " {} |", through(&self.c.weir))?;
        if self.plugins {
            write!(self.f, " {} |", through(&self.c.plugins))?;
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
