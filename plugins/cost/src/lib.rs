//! `cost`: prices every request from its actual usage, and enforces budgets.
//!
//! - On completion: cost = usage × the target's price (the host's catalog: `[prices]` in the
//!   config, then Weir's defaults for the providers' models), exact, in picodollars; a prediction
//!   is priced per request, per 1,000 instances and per second of the attempt that answered. It is written
//!   to the ledger (durable once appended), added to a metric, and returned to the client in
//!   `x-weir-cost-usd` when the response is a whole JSON body (a stream's headers are gone by then).
//! - At admission: for every budget that applies (a key or team, per UTC day or calendar month),
//!   the request reserves its worst-case cost — the prompt estimate at the input price plus
//!   `max_tokens` (or a default) at the output price, at the most expensive of the model's targets
//!   — against what is left: spent so far (the ledger's totals, which survive restarts) plus what
//!   requests in flight have reserved, all budgets in one `quota.reserve-all` (the host checks the
//!   spending in the same atomic step). A request that does not fit is refused with
//!   `insufficient_quota`; the reservation is released when the request's cost is on the ledger.

mod money;

use money::{Period, Predicted, Price, Tokens, cost, pico_from_usd, prediction_cost, usd};
use serde::{Deserialize, Serialize};
use weir_sdk::{
    ApiKind, Completion, Decision, HookSet, Plugin, PluginInfo, Rejection, Request, catalog, ledger, metrics, quota,
};

/// The window of the in-flight reservation buckets: practically never refilled, so reserved money
/// comes back only when a request's cost is recorded.
const HOLD_WINDOW_MS: u32 = u32::MAX;
/// The per-request local with the budget reservations.
const HELD: &str = "held";

/// The plugin's config table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    /// Budgets; every one that applies must have room for a request.
    #[serde(default)]
    budgets: Vec<BudgetConfig>,
    /// The completion tokens assumed for a request without `max_tokens`, when reserving.
    #[serde(default = "default_max_tokens")]
    default_max_tokens: u32,
    /// Send `x-weir-cost-usd` on non-streamed responses.
    #[serde(default = "yes")]
    header: bool,
}

fn default_max_tokens() -> u32 {
    4096
}

fn yes() -> bool {
    true
}

/// One budget as written: exactly one of `key`, `team`, `per`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BudgetConfig {
    /// One API key, by name.
    key: Option<String>,
    /// One team.
    team: Option<String>,
    /// Every key, or every team, each with its own budget of `usd`.
    per: Option<Who>,
    /// The amount per period, in US dollars.
    usd: f64,
    period: Period,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Who {
    Key,
    Team,
}

/// A checked budget.
#[derive(Debug)]
struct Budget {
    who: Who,
    /// `None`: every key or team.
    name: Option<String>,
    limit: u64,
    period: Period,
}

/// A reservation held from admission to completion.
#[derive(Debug, Serialize, Deserialize)]
struct Hold {
    reservation: u64,
}

struct Cost {
    budgets: Vec<Budget>,
    default_max_tokens: u32,
    header: bool,
}

impl Cost {
    /// The most a request can cost: its prompt estimate and completion budget at the highest
    /// price among the model's targets (the router may pick any of them).
    fn worst_case(&self, info: &weir_sdk::RequestInfo) -> u64 {
        // Every API but embeddings and predictions generates text: chat, completions, Messages,
        // Responses. A prediction's worst case is its request and instances; its compute time is
        // not known before it runs, and is charged when it is.
        let completion = match info.api {
            ApiKind::Embeddings | ApiKind::Predict => 0,
            _ => u64::from(info.max_tokens.unwrap_or(self.default_max_tokens)),
        };
        let tokens = Tokens { prompt: u64::from(info.prompt_tokens_estimate), completion, cached: 0 };
        let work = Predicted { instances: u64::from(info.instances), compute_ms: 0 };
        std::iter::once(info.model.clone())
            .chain(catalog::targets(&info.model))
            .filter_map(|name| catalog::price(&name).map(price))
            .map(|p| if info.api == ApiKind::Predict { prediction_cost(work, p) } else { cost(tokens, p) })
            .max()
            .unwrap_or(0)
    }
}

fn price(p: catalog::ModelPrice) -> Price {
    Price {
        input: p.input,
        output: p.output,
        cached_input: p.cached_input,
        per_request: p.per_request,
        per_1k_instances: p.per_thousand_instances,
        per_compute_second: p.per_compute_second,
    }
}

impl Plugin for Cost {
    fn init(config: &str) -> Result<(Self, PluginInfo), String> {
        let config: Config = weir_sdk::config(config).map_err(|e| format!("cost config: {e}"))?;
        let mut budgets = Vec::new();
        for (i, b) in config.budgets.into_iter().enumerate() {
            let (who, name) = match (b.key, b.team, b.per) {
                (Some(key), None, None) => (Who::Key, Some(key)),
                (None, Some(team), None) => (Who::Team, Some(team)),
                (None, None, Some(who)) => (who, None),
                _ => return Err(format!("cost config: budgets[{i}] needs exactly one of `key`, `team`, `per`")),
            };
            let limit = pico_from_usd(b.usd)
                .ok_or_else(|| format!("cost config: budgets[{i}].usd must be a non-negative amount, got {}", b.usd))?;
            budgets.push(Budget { who, name, limit, period: b.period });
        }
        let hooks = if budgets.is_empty() { HookSet::ON_COMPLETE } else { HookSet::ON_REQUEST | HookSet::ON_COMPLETE };
        let plugin = Cost { budgets, default_max_tokens: config.default_max_tokens, header: config.header };
        Ok((plugin, PluginInfo::hooks(hooks)))
    }

    fn on_request(&self, req: &Request) -> Decision {
        let info = req.info();
        let now = catalog::now_ms();
        let mut worst = None;
        // Every budget that applies, reserved together: one host call (one round trip with shared
        // state), all or nothing, each checked against what its spender already spent.
        let mut asks = Vec::new();
        let mut applying = Vec::new();
        for budget in &self.budgets {
            let name = match budget.who {
                Who::Key => &info.key_name,
                Who::Team => &info.team,
            };
            if budget.name.as_ref().is_some_and(|n| n != name) {
                continue;
            }
            let reserve = *worst.get_or_insert_with(|| self.worst_case(&info));
            let (start, end) = budget.period.bounds(now);
            let (spender, label) = match budget.who {
                Who::Key => (ledger::Spender::Key, "key"),
                Who::Team => (ledger::Spender::Team, "team"),
            };
            // In-flight reservations live in a bucket per spender and period, sized to the budget:
            // what it has left after this reservation must still cover what was already spent.
            asks.push(quota::Ask {
                key: format!("{label}|{}:{name}|{start}", name.len()),
                amount: reserve,
                limit: quota::Limit { amount: budget.limit, window_ms: HOLD_WINDOW_MS },
                covers: Some(quota::Spending { who: spender, name: name.clone(), since_ms: start }),
            });
            applying.push((budget, spender, label, name, start, end));
        }
        if asks.is_empty() {
            return Decision::Continue;
        }
        let refusal = match quota::reserve_all(&asks) {
            Ok(grants) => {
                let held: Vec<Hold> = grants.iter().map(|g| Hold { reservation: g.reservation }).collect();
                if let Ok(bytes) = serde_json::to_vec(&held) {
                    req.set_local(HELD, &bytes);
                }
                return Decision::Continue;
            }
            Err(refusal) => refusal,
        };
        let Some(&(budget, spender, label, name, start, end)) = applying.get(refusal.index as usize) else {
            return Decision::Continue;
        };
        // Off the admitted path: what was spent, for the message.
        let spent = ledger::spent(spender, name, start);
        let reserve = worst.unwrap_or(0);
        metrics::counter_add("budget_rejections", &[("model".into(), info.model.clone())], 1);
        Decision::Reject(Rejection {
            status: 429,
            code: "insufficient_quota".into(),
            message: format!(
                "The {label} {name:?} is over its budget of ${} per {}: ${} spent, and this request may cost up to ${}. The budget resets at the start of the next {} (UTC).",
                usd(budget.limit),
                budget.period.label(),
                usd(spent),
                usd(reserve),
                budget.period.label(),
            ),
            retry_after_ms: Some(u32::try_from(end.saturating_sub(now)).unwrap_or(u32::MAX)),
        })
    }

    fn on_complete(&self, req: &Request, outcome: Completion) {
        let info = req.info();
        // A prediction has no tokens: it is charged when an upstream answered it, for the
        // instances and the answering attempt's time.
        let answered = outcome.attempts.iter().rev().find(|a| (200..300).contains(&a.status));
        let prediction = (info.api == ApiKind::Predict && outcome.error_class.is_none())
            .then_some(answered)
            .flatten()
            .map(|a| Predicted { instances: u64::from(info.instances), compute_ms: u64::from(a.latency_ms) });
        let usage = outcome.usage.or_else(|| {
            prediction.map(|_| weir_sdk::Usage {
                prompt_tokens: 0,
                completion_tokens: 0,
                cached_tokens: 0,
                reasoning_tokens: 0,
            })
        });
        if let Some(usage) = usage {
            let target_price = catalog::price(&outcome.target).or_else(|| catalog::price(&info.model));
            let tokens = Tokens {
                prompt: u64::from(usage.prompt_tokens),
                completion: u64::from(usage.completion_tokens),
                cached: u64::from(usage.cached_tokens),
            };
            let cost_pico_usd = target_price.map_or(0, |p| match prediction {
                Some(work) => prediction_cost(work, price(p)),
                None => cost(tokens, price(p)),
            });
            // The ledger first, the reservation after: for a moment the request counts twice,
            // never zero times.
            ledger::append(&ledger::Entry {
                request_id: info.request_id.clone(),
                key_name: info.key_name.clone(),
                team: info.team.clone(),
                model: info.model.clone(),
                target: outcome.target.clone(),
                prompt_tokens: usage.prompt_tokens,
                completion_tokens: usage.completion_tokens,
                cached_tokens: usage.cached_tokens,
                cost_pico_usd,
            });
            let labels = [("model".to_owned(), info.model.clone()), ("team".to_owned(), info.team.clone())];
            metrics::counter_add("cost_pico_usd", &labels, cost_pico_usd);
            if target_price.is_none() {
                metrics::counter_add("unpriced_requests", &[("target".into(), outcome.target.clone())], 1);
            }
            if self.header && !info.stream && !outcome.mirrored {
                req.add_response_header("x-weir-cost-usd", &usd(cost_pico_usd));
            }
        }
        if let Some(held) = req.get_local(HELD).and_then(|b| serde_json::from_slice::<Vec<Hold>>(&b).ok()) {
            for hold in held {
                quota::settle(hold.reservation, 0);
            }
        }
    }
}

weir_sdk::export_plugin!(Cost);
