//! Strategies: the pure part of routing. Given the candidate targets with what the host knows of
//! them, put them in the order to try.

use serde::Deserialize;

/// How a model's targets are ordered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// In configured order: the first, then the next as fallback.
    #[default]
    Priority,
    /// The first picked at random in proportion to the weights, the rest in configured order.
    Weighted,
    /// Fastest first, by the host's moving average of latency to response headers.
    LeastLatency,
    /// Cheapest first for this request's expected tokens.
    LowestCost,
    /// Fewest requests in flight first.
    LeastBusy,
}

/// One candidate and what is known of it now.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    pub target: String,
    pub weight: u32,
    /// Milliseconds; 0 while the target has no history (so it gets tried).
    pub latency_ms: f32,
    pub in_flight: u32,
    /// Expected cost of this request there; `None` when the target has no price.
    pub cost: Option<u64>,
    pub context_window: Option<u32>,
}

/// Orders `candidates` by `strategy`. `random` is a uniform random number (for weighted picks).
/// Sorting is stable, so ties keep the configured order.
pub fn order(strategy: Strategy, mut candidates: Vec<Candidate>, random: u64) -> Vec<Candidate> {
    match strategy {
        Strategy::Priority => {}
        Strategy::Weighted => {
            let total: u64 = candidates.iter().map(|c| u64::from(c.weight)).sum();
            if total > 0 {
                let mut point = random % total;
                let pick = candidates
                    .iter()
                    .position(|c| {
                        let w = u64::from(c.weight);
                        if point < w {
                            true
                        } else {
                            point -= w;
                            false
                        }
                    })
                    .unwrap_or(0);
                let first = candidates.remove(pick);
                candidates.insert(0, first);
            }
        }
        Strategy::LeastLatency => candidates.sort_by(|a, b| a.latency_ms.total_cmp(&b.latency_ms)),
        Strategy::LowestCost => candidates.sort_by_key(|c| c.cost.unwrap_or(u64::MAX)),
        Strategy::LeastBusy => candidates.sort_by_key(|c| c.in_flight),
    }
    candidates
}

/// Drops targets whose context window cannot hold `needed` tokens; if none can, keeps only the
/// largest (its upstream will say what is wrong, in its own words).
pub fn fit_context(candidates: Vec<Candidate>, needed: u64) -> Vec<Candidate> {
    let fits = |c: &Candidate| c.context_window.is_none_or(|w| u64::from(w) >= needed);
    if candidates.iter().any(fits) {
        return candidates.into_iter().filter(fits).collect();
    }
    candidates.into_iter().max_by_key(|c| c.context_window).into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(target: &str, weight: u32, latency_ms: f32, in_flight: u32, cost: Option<u64>) -> Candidate {
        Candidate { target: target.into(), weight, latency_ms, in_flight, cost, context_window: None }
    }

    fn names(list: &[Candidate]) -> Vec<&str> {
        list.iter().map(|c| c.target.as_str()).collect()
    }

    #[test]
    fn each_strategy_orders_as_it_says() {
        let list = vec![c("a", 1, 30.0, 5, Some(9)), c("b", 3, 10.0, 1, None), c("c", 0, 0.0, 3, Some(2))];
        assert_eq!(names(&order(Strategy::Priority, list.clone(), 0)), ["a", "b", "c"]);
        assert_eq!(names(&order(Strategy::LeastLatency, list.clone(), 0)), ["c", "b", "a"], "no history first");
        assert_eq!(names(&order(Strategy::LowestCost, list.clone(), 0)), ["c", "a", "b"], "unpriced last");
        assert_eq!(names(&order(Strategy::LeastBusy, list.clone(), 0)), ["b", "c", "a"]);
        assert_eq!(names(&order(Strategy::Weighted, list.clone(), 0)), ["a", "b", "c"]);
        assert_eq!(names(&order(Strategy::Weighted, list.clone(), 1)), ["b", "a", "c"]);
        assert_eq!(names(&order(Strategy::Weighted, list.clone(), 3)), ["b", "a", "c"]);
        assert_eq!(names(&order(Strategy::Weighted, list, 4)), ["a", "b", "c"], "4 % 4 wraps to a");
    }

    #[test]
    fn weighted_picks_follow_the_weights() {
        let list = vec![c("a", 1, 0.0, 0, None), c("b", 3, 0.0, 0, None)];
        let firsts = (0..4000u64)
            .filter(|r| {
                order(Strategy::Weighted, list.clone(), r.wrapping_mul(0x9E37_79B9_7F4A_7C15)).first().unwrap().target
                    == "b"
            })
            .count();
        assert!((2800..3200).contains(&firsts), "{firsts} of 4000 to the weight-3 target");
    }

    #[test]
    fn too_small_context_windows_fall_back_to_larger_ones() {
        let mut small = c("small", 1, 0.0, 0, None);
        small.context_window = Some(4096);
        let mut large = c("large", 1, 0.0, 0, None);
        large.context_window = Some(128_000);
        let unknown = c("unknown", 1, 0.0, 0, None);
        let all = vec![small.clone(), large.clone(), unknown];
        assert_eq!(names(&fit_context(all.clone(), 1000)), ["small", "large", "unknown"]);
        assert_eq!(names(&fit_context(all, 10_000)), ["large", "unknown"]);
        assert_eq!(names(&fit_context(vec![small, large], 500_000)), ["large"]);
    }
}
