//! Prices, costs, budgets and calendar periods: the plugin's arithmetic, kept pure so it is tested
//! natively. Money is integer picodollars (10⁻¹² USD) throughout: a price in micro-dollars per
//! million tokens is exactly the cost of one token in picodollars, so no rounding ever happens.

use serde::Deserialize;

/// Picodollars in a dollar.
pub const PICO_PER_USD: u64 = 1_000_000_000_000;
/// Milliseconds in a day.
pub const DAY_MS: u64 = 86_400_000;

/// A price, micro-dollars per million tokens (as the host's catalog gives it), and for
/// predictions picodollars per request, per 1,000 instances and per second of compute.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Price {
    pub input: u64,
    pub output: u64,
    pub cached_input: u64,
    pub per_request: u64,
    pub per_1k_instances: u64,
    pub per_compute_second: u64,
}

/// The work of one prediction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Predicted {
    pub instances: u64,
    /// Milliseconds of the upstream attempt that answered.
    pub compute_ms: u64,
}

/// A prediction's cost: the request price, the instances at the per-1,000 price and the answering
/// attempt's time at the per-second price, each rounded down to whole picodollars (a thousandth of
/// a picodollar per instance is the most it can lose).
pub fn prediction_cost(work: Predicted, price: Price) -> u64 {
    price
        .per_request
        .saturating_add(work.instances.saturating_mul(price.per_1k_instances) / 1000)
        .saturating_add(work.compute_ms.saturating_mul(price.per_compute_second) / 1000)
}

/// Token counts of one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tokens {
    pub prompt: u64,
    pub completion: u64,
    pub cached: u64,
}

/// The exact cost: cached prompt tokens at the cached rate, the rest of the prompt at the input
/// rate, completion (reasoning included) at the output rate.
pub fn cost(tokens: Tokens, price: Price) -> u64 {
    let cached = tokens.cached.min(tokens.prompt);
    (tokens.prompt - cached)
        .saturating_mul(price.input)
        .saturating_add(cached.saturating_mul(price.cached_input))
        .saturating_add(tokens.completion.saturating_mul(price.output))
}

/// Picodollars as a decimal number of dollars, exact, without trailing zeros: `0.000012`.
pub fn usd(pico: u64) -> String {
    let whole = pico / PICO_PER_USD;
    let frac = pico % PICO_PER_USD;
    if frac == 0 {
        return whole.to_string();
    }
    let digits = format!("{frac:012}");
    format!("{whole}.{}", digits.trim_end_matches('0'))
}

/// Dollars from the config as picodollars, refusing what is not a non-negative finite amount.
pub fn pico_from_usd(usd: f64) -> Option<u64> {
    (0.0..1.8e7).contains(&usd).then(|| (usd * 1e12).round() as u64)
}

/// A budget's period.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Period {
    Day,
    Month,
}

impl Period {
    /// The UTC start and end (exclusive) of the period containing `now_ms`.
    pub fn bounds(self, now_ms: u64) -> (u64, u64) {
        let day = now_ms / DAY_MS;
        match self {
            Period::Day => (day * DAY_MS, (day + 1) * DAY_MS),
            Period::Month => {
                let (y, m, _) = civil_from_days(day as i64);
                let start = days_from_civil(y, m, 1);
                let end = if m == 12 { days_from_civil(y + 1, 1, 1) } else { days_from_civil(y, m + 1, 1) };
                (start as u64 * DAY_MS, end as u64 * DAY_MS)
            }
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Period::Day => "day",
            Period::Month => "month",
        }
    }
}

// Howard Hinnant's proleptic Gregorian calendar algorithms (public domain, "chrono-Compatible
// Low-Level Date Algorithms"): no date crate builds for this component's import-free world as
// small as these few lines.
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = i64::from((m + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { yoe + era * 400 + 1 } else { yoe + era * 400 }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cost_is_exact_in_picodollars() {
        let price = Price { input: 150_000, output: 600_000, cached_input: 75_000, ..Price::default() };
        let tokens = Tokens { prompt: 1000, completion: 10, cached: 400 };
        assert_eq!(cost(tokens, price), 600 * 150_000 + 400 * 75_000 + 10 * 600_000);
        assert_eq!(usd(cost(tokens, price)), "0.000126");
        assert_eq!(usd(3 * PICO_PER_USD), "3");
        assert_eq!(usd(1), "0.000000000001");
        assert_eq!(pico_from_usd(2.5), Some(2_500_000_000_000));
        assert_eq!(pico_from_usd(-1.0), None);
    }

    #[test]
    fn predictions_cost_per_request_per_thousand_instances_and_per_second() {
        // $0.000002 a request, $0.05 per 1,000 instances, $0.0001 per second.
        let price = Price {
            per_request: 2_000_000,
            per_1k_instances: 50_000_000_000,
            per_compute_second: 100_000_000,
            ..Price::default()
        };
        let cost = prediction_cost(Predicted { instances: 2500, compute_ms: 1500 }, price);
        assert_eq!(cost, 2_000_000 + 125_000_000_000 + 150_000_000);
        assert_eq!(usd(cost), "0.125152");
        assert_eq!(prediction_cost(Predicted { instances: 0, compute_ms: 0 }, Price::default()), 0);
    }

    #[test]
    fn periods_are_utc_days_and_calendar_months() {
        // 2026-11-25T14:00:00Z
        let now = 1_795_615_200_000;
        let (start, end) = Period::Day.bounds(now);
        assert_eq!((start, end - start), (1_795_564_800_000, DAY_MS));
        let (start, end) = Period::Month.bounds(now);
        assert_eq!(start, 1_793_491_200_000, "2026-11-01T00:00:00Z");
        assert_eq!(end, 1_796_083_200_000, "2026-12-01T00:00:00Z");
        // December rolls into the next year; February of a leap year has 29 days.
        let (start, end) = Period::Month.bounds(days_from_civil(2026, 12, 31) as u64 * DAY_MS);
        assert_eq!((end - start) / DAY_MS, 31);
        let (start, end) = Period::Month.bounds(days_from_civil(2028, 2, 10) as u64 * DAY_MS);
        assert_eq!((end - start) / DAY_MS, 29);
        assert_eq!(civil_from_days(days_from_civil(2026, 11, 25)), (2026, 11, 25));
    }
}
