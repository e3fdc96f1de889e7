//! `canary`: Weir's built-in weighted splits between two variants of a model, with a guarded
//! rollout and an optional shadow mode.
//!
//! For each configured split, requests for its public `model` go to the `canary` for `weight`
//! percent of end users and to the `baseline` for the rest. The side is chosen by a stable hash of
//! the OpenAI `user` field (or, without one, the API key's name), so one user always sees one
//! variant; the header `x-weir-variant: canary | baseline` forces a side for testing.
//!
//! Every completion is counted per variant (requests, errors, latency and time-to-first-token
//! histograms, cost from the catalog's prices) and, while the guard is on, recorded in time buckets
//! of the host's key-value store. When the canary's error rate or p95 latency over that sliding
//! window exceeds the baseline's by more than the configured margins (once it has a minimum sample),
//! its weight drops to 0: logged, counted (`rollbacks`) and shown by the `weight` gauge. The rollback
//! is stored under a key derived from the split's whole config, so changing the config re-arms it.
//!
//! In shadow mode the client always gets the baseline's answer, and `weight` percent of users'
//! requests are also mirrored to the canary in the background; those mirrored outcomes feed the
//! canary's numbers and its guard.
//!
//! Put `canary` after `router` in a chain: a later `route` decision wins.

mod guard;
mod split;

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use weir_sdk::{
    Completion, Decision, HookSet, MAX_MANY, Plugin, PluginInfo, Request, Usage, catalog, kv, log, metrics,
};

use guard::{Thresholds, Window};
use split::Variant;

/// The per-request local holding the variant (one byte) and whether the split was rolled back
/// (a second byte, 1 or 0) from `on_request` to `on_complete`.
const CHOSEN: &str = "variant";
/// The guard's latency check reads the whole window (2 × buckets × 38 keys); it runs at most
/// once per this many milliseconds per split. The error-rate check runs on every canary outcome.
const LATENCY_CHECK_EVERY_MS: u64 = 1_000;
/// How often one instance refreshes the `weight` gauge while it serves a split.
const GAUGE_EVERY_MS: u64 = 1_000;
/// Completions that ended in one of these failed upstream (a client abort, a policy rejection or
/// a bad request is not the variant's fault).
const UPSTREAM_FAILURES: &[&str] = &["upstream_failed", "upstream_unavailable", "upstream_timeout", "upstream_auth"];

/// The plugin's config table. Unknown fields are refused.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    /// One split per public model.
    splits: Vec<SplitConfig>,
    /// The request header that forces a variant (`canary` or `baseline`).
    #[serde(default = "default_header")]
    header: String,
    /// A request header whose value names the user a request is sticky for, before OpenAI's
    /// `user` and the API key: for traffic that has no `user` field (predictions: a customer or
    /// account id the app sends).
    #[serde(default)]
    sticky_header: Option<String>,
}

/// One split. Serialized (as JSON) into the identity of its guard's state, so any change re-arms it.
#[derive(Deserialize, Serialize, Clone)]
#[serde(deny_unknown_fields)]
struct SplitConfig {
    /// The public model name clients ask for.
    model: String,
    /// Where the baseline's requests go: a public model name or a target (`upstream/model`).
    baseline: String,
    /// Where the canary's requests go: a public model name or a target (`upstream/model`).
    canary: String,
    /// The canary's share of users, in percent (0 to 100, up to two decimals).
    weight: f64,
    /// Serve every client from the baseline and mirror the canary's share to the canary.
    #[serde(default)]
    shadow: bool,
    /// The guarded rollout.
    #[serde(default)]
    guard: GuardConfig,
}

#[derive(Deserialize, Serialize, Clone)]
#[serde(deny_unknown_fields, default)]
struct GuardConfig {
    /// Whether the canary is rolled back automatically.
    enabled: bool,
    /// The sliding window, in seconds.
    window_seconds: u32,
    /// How many time buckets the window is made of.
    buckets: u32,
    /// The least number of canary requests in the window before it is judged.
    min_requests: u32,
    /// How far the canary's error rate may exceed the baseline's (0.05 = 5 points).
    max_error_rate_increase: f64,
    /// How many times the baseline's p95 latency the canary's may reach.
    max_p95_latency_ratio: f64,
}

impl Default for GuardConfig {
    fn default() -> Self {
        GuardConfig {
            enabled: true,
            window_seconds: 60,
            buckets: 6,
            min_requests: 20,
            max_error_rate_increase: 0.05,
            max_p95_latency_ratio: 1.5,
        }
    }
}

fn default_header() -> String {
    "x-weir-variant".to_owned()
}

/// A split, validated.
struct Split {
    model: String,
    baseline: String,
    canary: String,
    weight_bp: u32,
    shadow: bool,
    guard: Option<Guard>,
    /// A hash of the split's whole config: the namespace of its guard's state.
    id: String,
    /// When this instance last set the `weight` gauge (0: never).
    gauge_set_at: Cell<u64>,
}

struct Guard {
    thresholds: Thresholds,
    bucket_ms: u64,
    buckets: u64,
}

/// The plugin, built from its config once per instance.
struct Canary {
    splits: BTreeMap<String, Split>,
    header: String,
    sticky_header: Option<String>,
    /// Prices by target or model, asked of the catalog once per instance: they come from the
    /// config, and a new config brings new instances.
    prices: RefCell<BTreeMap<String, Option<catalog::ModelPrice>>>,
}

impl Plugin for Canary {
    fn init(config: &str) -> Result<(Self, PluginInfo), String> {
        let de = &mut serde_json::Deserializer::from_str(config);
        let config: Config = serde_path_to_error::deserialize(de).map_err(|e| match e.path().to_string() {
            path if path == "." => format!("canary config: {}", e.inner()),
            path => format!("canary config: {path}: {}", e.inner()),
        })?;
        let valid = |h: &str| !h.is_empty() && h.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if !valid(&config.header) {
            return Err(format!("canary config: header {:?} is not a valid header name", config.header));
        }
        if let Some(sticky) = config.sticky_header.as_deref().filter(|h| !valid(h)) {
            return Err(format!("canary config: sticky_header {sticky:?} is not a valid header name"));
        }
        let mut splits = BTreeMap::new();
        for (i, raw) in config.splits.into_iter().enumerate() {
            let split = validate(&raw).map_err(|e| format!("canary config: splits[{i}].{e}"))?;
            // A variant the host cannot route to would send every request of its share to the
            // plugin's fault path: refuse the config now, naming the field. A target
            // `upstream/model` that no `[[models]]` entry lists becomes routable here.
            for (field, name) in [("baseline", &split.baseline), ("canary", &split.canary)] {
                catalog::check_target(name).map_err(|why| format!("canary config: splits[{i}].{field}: {why}"))?;
            }
            if splits.contains_key(&split.model) {
                return Err(format!("canary config: splits[{i}].model: {:?} has a split already", split.model));
            }
            splits.insert(split.model.clone(), split);
        }
        let plugin = Canary {
            splits,
            header: config.header.to_ascii_lowercase(),
            sticky_header: config.sticky_header.map(|h| h.to_ascii_lowercase()),
            prices: RefCell::new(BTreeMap::new()),
        };
        let headers = std::iter::once(plugin.header.clone()).chain(plugin.sticky_header.clone());
        let info = PluginInfo::hooks(HookSet::ON_REQUEST | HookSet::ON_COMPLETE).reading_headers(headers);
        Ok((plugin, info))
    }

    fn on_request(&self, req: &Request) -> Decision {
        let info = req.info();
        let Some(split) = self.splits.get(&info.model) else { return Decision::Continue };
        let rolled_back = split.guard.is_some() && rolled_back(split);
        let weight_bp = if rolled_back { 0 } else { split.weight_bp };
        // A user and a key of the same name are different people.
        let sticky = self.sticky_header.as_deref().and_then(|h| req.header(h)).filter(|v| !v.is_empty());
        let who = match (sticky, &info.end_user) {
            (Some(id), _) => format!("h:{id}"),
            (None, Some(user)) => format!("u:{user}"),
            (None, None) => format!("k:{}", info.key_name),
        };
        let in_share = split::in_canary_share(&split.model, &who, weight_bp);
        let forced = req.header(&self.header).as_deref().and_then(Variant::parse);
        let variant = match forced {
            Some(variant) => variant,
            None if in_share && !split.shadow => Variant::Canary,
            None => Variant::Baseline,
        };
        if split.shadow && forced.is_none() && in_share {
            req.mirror(&mirror_target(&split.canary));
        }
        req.set_local(CHOSEN, &[variant.byte(), u8::from(rolled_back)]);
        match variant {
            Variant::Canary => Decision::Route(split.canary.clone()),
            // A baseline that is the requested model itself keeps whatever an earlier plugin (the
            // router) chose for it.
            Variant::Baseline if split.baseline == info.model => Decision::Continue,
            Variant::Baseline => Decision::Route(split.baseline.clone()),
        }
    }

    fn on_complete(&self, req: &Request, outcome: Completion) {
        let info = req.info();
        let Some(split) = self.splits.get(&info.model) else { return };
        let (variant, rolled_back) = if outcome.mirrored {
            // A copy another plugin sent elsewhere is none of the canary's business.
            if outcome.target != mirror_target(&split.canary) {
                return;
            }
            (Variant::Canary, false)
        } else {
            // Without it the request never got past an earlier plugin: not the variants' doing.
            let Some(chosen) = req.get_local(CHOSEN) else { return };
            let Some(variant) = chosen.first().copied().and_then(Variant::from_byte) else { return };
            (variant, chosen.get(1) == Some(&1))
        };
        // Requests that never reached an upstream (rejected by a later plugin) say nothing about it.
        if outcome.attempts.is_empty() && outcome.target.is_empty() {
            return;
        }
        let error = failed(&outcome);
        let labels = vec![
            ("model".to_owned(), split.model.clone()),
            ("variant".to_owned(), variant.label().to_owned()),
            ("traffic".to_owned(), if outcome.mirrored { "shadow" } else { "live" }.to_owned()),
        ];
        metrics::counter_add("requests", &labels, 1);
        if error {
            metrics::counter_add("errors", &labels, 1);
        } else {
            metrics::histogram_observe("latency_ms", &labels, f64::from(outcome.total_ms));
            if let Some(ttft) = outcome.ttft_ms {
                metrics::histogram_observe("ttft_ms", &labels, f64::from(ttft));
            }
        }
        if let Some(usage) = outcome.usage {
            let named = match variant {
                Variant::Baseline => &split.baseline,
                Variant::Canary => &split.canary,
            };
            if let Some(price) = self.price(&outcome.target).or_else(|| self.price(named)) {
                metrics::counter_add("cost_pico_usd", &labels, cost_pico_usd(usage, &price));
            }
        }
        let now = catalog::now_ms();
        // The gauge changes only with a rollback (which sets it at once) or a new config, so each
        // instance refreshes it at most once a second rather than on every request.
        if !outcome.mirrored && now >= split.gauge_set_at.get().saturating_add(GAUGE_EVERY_MS) {
            let weight = if rolled_back { 0.0 } else { f64::from(split.weight_bp) / 100.0 };
            metrics::gauge_set("weight", &[("model".to_owned(), split.model.clone())], weight);
            split.gauge_set_at.set(now);
        }

        let Some(guard) = &split.guard else { return };
        // One state call (one round trip on Redis): the outcome's counters, and for a canary
        // outcome what its judgement reads, in the same call.
        let judging = variant == Variant::Canary && !rolled_back;
        if let Some(read) = record(split, guard, variant, now, error, outcome.total_ms, judging) {
            judge(split, guard, now, read);
        }
    }
}

impl Canary {
    /// The catalog's price of a target or model, remembered for the instance's life.
    fn price(&self, name: &str) -> Option<catalog::ModelPrice> {
        if let Some(known) = self.prices.borrow().get(name) {
            return *known;
        }
        let price = catalog::price(name);
        self.prices.borrow_mut().insert(name.to_owned(), price);
        price
    }
}

/// Checks a split's config and builds it; errors start with the field's name.
fn validate(raw: &SplitConfig) -> Result<Split, String> {
    for (field, value) in [("model", &raw.model), ("baseline", &raw.baseline), ("canary", &raw.canary)] {
        if value.is_empty() {
            return Err(format!("{field}: must not be empty"));
        }
    }
    if raw.baseline == raw.canary {
        return Err("canary: must differ from the baseline".to_owned());
    }
    if !(0.0..=100.0).contains(&raw.weight) {
        return Err(format!("weight: must be a percentage from 0 to 100, got {}", raw.weight));
    }
    let g = &raw.guard;
    let guard = if g.enabled {
        if g.buckets == 0 || g.buckets > 60 {
            return Err(format!("guard.buckets: must be from 1 to 60, got {}", g.buckets));
        }
        if g.window_seconds == 0 || !g.window_seconds.is_multiple_of(g.buckets) || g.window_seconds > 86_400 {
            return Err(format!(
                "guard.window_seconds: must be a whole number of buckets ({}) of whole seconds, at most a day",
                g.buckets
            ));
        }
        if g.min_requests == 0 {
            return Err("guard.min_requests: must be at least 1".to_owned());
        }
        if !(0.0..=1.0).contains(&g.max_error_rate_increase) {
            return Err("guard.max_error_rate_increase: must be from 0 to 1".to_owned());
        }
        if !(g.max_p95_latency_ratio >= 1.0 && g.max_p95_latency_ratio.is_finite()) {
            return Err("guard.max_p95_latency_ratio: must be at least 1".to_owned());
        }
        Some(Guard {
            thresholds: Thresholds {
                min_requests: u64::from(g.min_requests),
                max_error_rate_increase: g.max_error_rate_increase,
                max_p95_latency_ratio: g.max_p95_latency_ratio,
            },
            bucket_ms: u64::from(g.window_seconds / g.buckets) * 1000,
            buckets: u64::from(g.buckets),
        })
    } else {
        None
    };
    let identity = serde_json::to_string(raw).map_err(|e| format!("model: {e}"))?;
    Ok(Split {
        model: raw.model.clone(),
        baseline: raw.baseline.clone(),
        canary: raw.canary.clone(),
        // Two decimals of a percent are whole basis points; the range check above bounds it.
        weight_bp: (raw.weight * 100.0).round() as u32,
        shadow: raw.shadow,
        guard,
        id: format!("{:016x}", split::fnv1a(&[identity.as_bytes()])),
        gauge_set_at: Cell::new(0),
    })
}

/// The target a shadow copy goes to: the first target of a public model, or the target itself.
fn mirror_target(canary: &str) -> String {
    catalog::targets(canary).into_iter().next().unwrap_or_else(|| canary.to_owned())
}

/// Whether the request failed because of its upstream: a failed attempt (no answer, 429, 5xx),
/// or an upstream failure at the end (a timeout, a stream that broke off).
fn failed(outcome: &Completion) -> bool {
    outcome.attempts.iter().any(|a| a.status == 0 || a.status == 429 || a.status >= 500)
        || outcome.status >= 500
        || outcome.error_class.as_deref().is_some_and(|class| UPSTREAM_FAILURES.contains(&class))
}

fn cost_pico_usd(usage: Usage, price: &catalog::ModelPrice) -> u64 {
    let cached = u64::from(usage.cached_tokens.min(usage.prompt_tokens));
    let uncached = u64::from(usage.prompt_tokens) - cached;
    (uncached.saturating_mul(price.input))
        .saturating_add(cached.saturating_mul(price.cached_input))
        .saturating_add(u64::from(usage.completion_tokens).saturating_mul(price.output))
}

/// The key of the rollback flag of a split.
fn rollback_key(split: &Split) -> String {
    format!("{}:rolled-back", split.id)
}

fn rolled_back(split: &Split) -> bool {
    kv::get(&rollback_key(split))
        .and_then(|v| String::from_utf8(v).ok())
        .and_then(|v| v.parse::<i64>().ok())
        .unwrap_or(0)
        > 0
}

/// The key of one counter of one time bucket.
fn stat_key(split: &Split, variant: Variant, bucket: u64, stat: &str) -> String {
    format!("{}:{}:{bucket}:{stat}", split.id, variant.label())
}

/// What a canary outcome's call read for its judgement.
struct Read {
    /// This outcome is the first of its second to judge: the latency histograms are read too.
    latency: bool,
    /// The rollback flag, then both variants' windows without their histograms (see [`judge`]).
    counts: Vec<u64>,
}

/// Adds one outcome to the current time bucket, in one call. When `judging`, the same call claims
/// the latency check of this second and reads the rollback flag and both variants' requests and
/// errors, by adding 0 to them: `add` answers a counter's new value, so reading with it costs no
/// second round trip (a missing counter is created at 0, with the TTL its bucket would get).
fn record(
    split: &Split,
    guard: &Guard,
    variant: Variant,
    now: u64,
    error: bool,
    total_ms: u32,
    judging: bool,
) -> Option<Read> {
    let bucket = now / guard.bucket_ms;
    // A bucket is needed until it leaves the window.
    let ttl = u32::try_from(guard.bucket_ms * (guard.buckets + 1)).unwrap_or(u32::MAX);
    let stat = if error { "e".to_owned() } else { format!("l{}", guard::latency_bin(total_ms)) };
    let mut adds =
        vec![(stat_key(split, variant, bucket, "n"), 1, ttl), (stat_key(split, variant, bucket, &stat), 1, ttl)];
    if judging {
        let second = now / LATENCY_CHECK_EVERY_MS;
        adds.push((format!("{}:latency-check:{second}", split.id), 1, 2 * LATENCY_CHECK_EVERY_MS as u32));
        adds.push((rollback_key(split), 0, 0));
        for v in [Variant::Canary, Variant::Baseline] {
            adds.extend(window_keys(split, guard, v, now, false).into_iter().map(|key| (key, 0, ttl)));
        }
    }
    let added: Vec<i64> = adds.chunks(MAX_MANY).flat_map(kv::add_many).collect();
    judging.then(|| Read {
        latency: added.get(2) == Some(&1),
        counts: added.iter().skip(3).map(|&n| u64::try_from(n).unwrap_or(0)).collect(),
    })
}

/// The keys a variant's window is summed from: for the current bucket and the `buckets - 1`
/// before it, the requests, the errors and, with `latency`, every latency bin.
fn window_keys(split: &Split, guard: &Guard, variant: Variant, now: u64, latency: bool) -> Vec<String> {
    let mut keys = Vec::new();
    for bucket in window_buckets(guard, now) {
        keys.push(stat_key(split, variant, bucket, "n"));
        keys.push(stat_key(split, variant, bucket, "e"));
        if latency {
            keys.extend((0..guard::BINS).map(|bin| stat_key(split, variant, bucket, &format!("l{bin}"))));
        }
    }
    keys
}

/// The buckets of the window ending at `now`.
fn window_buckets(guard: &Guard, now: u64) -> std::ops::RangeInclusive<u64> {
    let current = now / guard.bucket_ms;
    current.saturating_sub(guard.buckets - 1)..=current
}

/// Sums the values read for [`window_keys`], consumed in the same order.
fn window_from(values: &mut impl Iterator<Item = u64>, guard: &Guard, now: u64, latency: bool) -> Window {
    let mut w = Window::default();
    for _ in window_buckets(guard, now) {
        w.requests += values.next().unwrap_or(0);
        w.errors += values.next().unwrap_or(0);
        if latency {
            for n in &mut w.latency {
                *n += values.next().unwrap_or(0);
            }
        }
    }
    w
}

/// A counter's value as `kv` holds it (decimal digits), 0 when missing.
fn count(value: Option<Vec<u8>>) -> u64 {
    value.and_then(|v| String::from_utf8(v).ok()).and_then(|v| v.parse().ok()).unwrap_or(0)
}

/// `kv::get_many` over any number of keys, [`MAX_MANY`] to a call (one call but on the latency
/// check, which reads every bin of both windows).
fn get_all(keys: &[String]) -> Vec<Option<Vec<u8>>> {
    keys.chunks(MAX_MANY).flat_map(kv::get_many).collect()
}

/// Judges the canary and rolls it back when it fails the guard, from what [`record`] read; the
/// outcome that claimed this second's latency check reads the flag and both windows again with
/// their histograms (once a second across every instance and replica, one more read).
fn judge(split: &Split, guard: &Guard, now: u64, read: Read) {
    let latency = read.latency;
    let counts = if latency {
        let mut keys = vec![rollback_key(split)];
        keys.extend(window_keys(split, guard, Variant::Canary, now, true));
        keys.extend(window_keys(split, guard, Variant::Baseline, now, true));
        get_all(&keys).into_iter().map(count).collect()
    } else {
        read.counts
    };
    let mut values = counts.into_iter();
    if values.next().unwrap_or(0) > 0 {
        return;
    }
    let canary = window_from(&mut values, guard, now, latency);
    if canary.requests < guard.thresholds.min_requests {
        return;
    }
    let baseline = window_from(&mut values, guard, now, latency);
    let Some(trip) = guard::check(&canary, &baseline, &guard.thresholds, latency) else { return };
    // `add` is atomic: exactly one instance sees 1 and reports the rollback.
    if kv::add(&rollback_key(split), 1, 0) == 1 {
        let model = ("model".to_owned(), split.model.clone());
        metrics::counter_add("rollbacks", &[model.clone(), ("reason".to_owned(), trip.label().to_owned())], 1);
        metrics::gauge_set("weight", &[model], 0.0);
        log::log(
            log::Level::Warn,
            &format!(
                "canary {} of model {} rolled back to weight 0: {trip}; change the split's config to re-arm it",
                split.canary, split.model
            ),
        );
    }
}

weir_sdk::export_plugin!(Canary);

#[cfg(test)]
mod tests {
    use weir_sdk::Attempt;

    use super::*;

    fn completion(status: u16, attempts: &[u16], error_class: Option<&str>) -> Completion {
        Completion {
            status,
            target: "up/m".into(),
            usage: None,
            ttft_ms: None,
            total_ms: 10,
            error_class: error_class.map(str::to_owned),
            attempts: attempts.iter().map(|&status| Attempt { target: "up/m".into(), status, latency_ms: 5 }).collect(),
            mirrored: false,
        }
    }

    #[test]
    fn upstream_failures_count_as_errors_and_client_mistakes_do_not() {
        assert!(!failed(&completion(200, &[200], None)));
        assert!(failed(&completion(200, &[503, 200], None)), "a failure a retry hid still counts");
        assert!(failed(&completion(502, &[0], Some("upstream_unavailable"))));
        assert!(failed(&completion(200, &[429, 200], None)));
        assert!(failed(&completion(200, &[200], Some("upstream_failed"))), "a stream that broke off");
        assert!(!failed(&completion(400, &[400], Some("upstream_rejected"))));
        assert!(!failed(&completion(200, &[200], Some("client_abort"))));
    }

    fn raw(weight: f64) -> SplitConfig {
        SplitConfig {
            model: "m".into(),
            baseline: "m".into(),
            canary: "up/m2".into(),
            weight,
            shadow: false,
            guard: GuardConfig::default(),
        }
    }

    #[test]
    fn a_window_is_summed_from_its_keys_in_the_order_they_were_read() {
        let split = validate(&raw(10.0)).expect("valid");
        let guard = split.guard.as_ref().expect("on by default");
        let now = 1_000_000_000;
        // The counters as `kv` would hold them: two buckets of the window, one from before it.
        let current = now / guard.bucket_ms;
        let store: BTreeMap<String, u64> = [
            (stat_key(&split, Variant::Canary, current, "n"), 7),
            (stat_key(&split, Variant::Canary, current, "e"), 2),
            (stat_key(&split, Variant::Canary, current, &format!("l{}", guard::latency_bin(40))), 5),
            (stat_key(&split, Variant::Canary, current - 5, "n"), 3),
            (stat_key(&split, Variant::Canary, current - 6, "n"), 100),
            (stat_key(&split, Variant::Baseline, current, "n"), 11),
        ]
        .into_iter()
        .collect();
        for latency in [false, true] {
            let keys = window_keys(&split, guard, Variant::Canary, now, latency);
            assert_eq!(keys.len(), 6 * if latency { 2 + guard::BINS } else { 2 });
            let mut values = keys.iter().map(|k| store.get(k).copied().unwrap_or(0));
            let w = window_from(&mut values, guard, now, latency);
            assert_eq!(values.next(), None, "every value read is used");
            assert_eq!((w.requests, w.errors), (10, 2), "the bucket before the window is left out");
            assert_eq!(w.latency.iter().sum::<u64>(), if latency { 5 } else { 0 });
        }
    }

    #[test]
    fn a_split_is_validated_and_its_identity_follows_its_whole_config() {
        let split = validate(&raw(12.5)).expect("valid");
        assert_eq!(split.weight_bp, 1_250);
        let guard = split.guard.as_ref().expect("on by default");
        assert_eq!((guard.bucket_ms, guard.buckets), (10_000, 6));
        assert_eq!(validate(&raw(12.5)).expect("valid").id, split.id, "the same config, the same identity");
        assert_ne!(validate(&raw(13.0)).expect("valid").id, split.id, "a new weight re-arms the guard");
        let mut stricter = raw(12.5);
        stricter.guard.min_requests = 50;
        assert_ne!(validate(&stricter).expect("valid").id, split.id);

        assert!(validate(&raw(100.5)).is_err_and(|e| e.starts_with("weight")));
        let mut same = raw(1.0);
        same.canary = "m".into();
        assert!(validate(&same).is_err_and(|e| e.starts_with("canary")));
        let mut uneven = raw(1.0);
        uneven.guard.window_seconds = 50;
        assert!(validate(&uneven).is_err_and(|e| e.starts_with("guard.window_seconds")));
        let mut off = raw(1.0);
        off.guard = GuardConfig { enabled: false, window_seconds: 0, ..GuardConfig::default() };
        assert!(validate(&off).expect("a disabled guard is not checked").guard.is_none());
    }
}
