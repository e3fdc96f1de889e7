//! The guarded rollout's judgement: the canary's error rate and p95 latency over the sliding
//! window, compared with the baseline's.

use std::fmt;

/// Latency histogram bins: bin `i` holds latencies up to `2^((i+1)/2)` ms, so the bins grow by
/// √2 and a p95 is known to within that factor; the last bin (from about 185 s) takes the rest.
pub const BINS: usize = 36;

/// The bin of a latency in milliseconds.
pub fn latency_bin(ms: u32) -> usize {
    if ms <= 1 {
        return 0;
    }
    // 2·log2(ms), rounded up less one: ms in (2^(i/2), 2^((i+1)/2)] lands in bin i.
    let exact = 2.0 * f64::from(ms).log2();
    let bin = exact.ceil() as usize;
    bin.saturating_sub(1).min(BINS - 1)
}

/// The upper bound of bin `i`, in milliseconds.
pub fn bin_upper(i: usize) -> f64 {
    2f64.powf((i as f64 + 1.0) / 2.0)
}

/// One variant's numbers over the window.
#[derive(Debug, Clone, PartialEq)]
pub struct Window {
    /// Requests that reached an upstream.
    pub requests: u64,
    /// Of those, the ones that failed.
    pub errors: u64,
    /// Latencies of the successful ones, by bin.
    pub latency: [u64; BINS],
}

impl Default for Window {
    fn default() -> Self {
        Window { requests: 0, errors: 0, latency: [0; BINS] }
    }
}

impl Window {
    pub fn error_rate(&self) -> f64 {
        if self.requests == 0 { 0.0 } else { self.errors as f64 / self.requests as f64 }
    }

    /// Latency samples.
    pub fn timed(&self) -> u64 {
        self.latency.iter().sum()
    }

    /// The 95th percentile latency (the upper bound of its bin), if there are samples.
    pub fn p95(&self) -> Option<f64> {
        let total = self.timed();
        if total == 0 {
            return None;
        }
        let rank = (total * 95).div_ceil(100);
        let mut seen = 0;
        for (i, n) in self.latency.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return Some(bin_upper(i));
            }
        }
        Some(bin_upper(BINS - 1))
    }
}

/// When the canary is rolled back.
#[derive(Debug, Clone, Copy)]
pub struct Thresholds {
    /// The least number of canary requests in the window before judging (and, for latency, of
    /// timed requests of each variant).
    pub min_requests: u64,
    /// The canary's error rate may exceed the baseline's by at most this (0.05 = 5 points).
    pub max_error_rate_increase: f64,
    /// The canary's p95 latency may be at most this many times the baseline's.
    pub max_p95_latency_ratio: f64,
}

/// Why a canary was rolled back.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Trip {
    ErrorRate { canary: f64, baseline: f64, requests: u64 },
    Latency { canary_p95: f64, baseline_p95: f64 },
}

impl Trip {
    pub fn label(self) -> &'static str {
        match self {
            Trip::ErrorRate { .. } => "error_rate",
            Trip::Latency { .. } => "latency",
        }
    }
}

impl fmt::Display for Trip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Trip::ErrorRate { canary, baseline, requests } => write!(
                f,
                "error rate {:.1}% over {requests} requests against the baseline's {:.1}%",
                canary * 100.0,
                baseline * 100.0
            ),
            Trip::Latency { canary_p95, baseline_p95 } => {
                write!(f, "p95 latency about {canary_p95:.0} ms against the baseline's about {baseline_p95:.0} ms")
            }
        }
    }
}

/// Judges the canary against the baseline: the error rate always, the latency when `latency` is
/// set (it reads more of the store, so the plugin checks it less often).
pub fn check(canary: &Window, baseline: &Window, t: &Thresholds, latency: bool) -> Option<Trip> {
    if canary.requests >= t.min_requests && canary.error_rate() > baseline.error_rate() + t.max_error_rate_increase {
        return Some(Trip::ErrorRate {
            canary: canary.error_rate(),
            baseline: baseline.error_rate(),
            requests: canary.requests,
        });
    }
    if latency
        && canary.timed() >= t.min_requests
        && baseline.timed() >= t.min_requests
        && let (Some(canary_p95), Some(baseline_p95)) = (canary.p95(), baseline.p95())
        && canary_p95 > baseline_p95 * t.max_p95_latency_ratio
    {
        return Some(Trip::Latency { canary_p95, baseline_p95 });
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Thresholds = Thresholds { min_requests: 20, max_error_rate_increase: 0.05, max_p95_latency_ratio: 1.5 };

    fn window(requests: u64, errors: u64, latencies: &[(u32, u64)]) -> Window {
        let mut w = Window { requests, errors, ..Window::default() };
        for &(ms, n) in latencies {
            w.latency[latency_bin(ms)] += n;
        }
        w
    }

    #[test]
    fn bins_grow_by_the_square_root_of_two() {
        assert_eq!(latency_bin(0), 0);
        assert_eq!(latency_bin(1), 0);
        assert_eq!(latency_bin(2), 1);
        assert_eq!(latency_bin(3), 3);
        assert_eq!(latency_bin(4), 3);
        assert_eq!(latency_bin(5), 4);
        assert_eq!(latency_bin(u32::MAX), BINS - 1);
        for ms in [2, 3, 7, 100, 1_000, 60_000] {
            let bin = latency_bin(ms);
            assert!(f64::from(ms) <= bin_upper(bin) + 1e-9 && f64::from(ms) > bin_upper(bin - 1), "{ms} in {bin}");
        }
    }

    #[test]
    fn the_p95_is_the_bin_of_the_95th_percentile() {
        let w = window(100, 0, &[(10, 95), (1_000, 5)]);
        assert_eq!(w.p95(), Some(bin_upper(latency_bin(10))));
        let w = window(100, 0, &[(10, 94), (1_000, 6)]);
        assert_eq!(w.p95(), Some(bin_upper(latency_bin(1_000))));
        assert_eq!(Window::default().p95(), None);
    }

    #[test]
    fn a_failing_canary_trips_once_the_sample_is_big_enough() {
        let baseline = window(200, 2, &[]);
        assert_eq!(check(&window(19, 10, &[]), &baseline, &T, false), None, "too few requests");
        let trip = check(&window(20, 10, &[]), &baseline, &T, false);
        assert!(matches!(trip, Some(Trip::ErrorRate { requests: 20, .. })), "{trip:?}");
        assert_eq!(check(&window(100, 5, &[]), &baseline, &T, false), None, "within 5 points of 1%");
        assert!(check(&window(100, 7, &[]), &baseline, &T, false).is_some());
        // Relative to the baseline: when both fail alike, the canary is not to blame.
        assert_eq!(check(&window(100, 50, &[]), &window(100, 48, &[]), &T, false), None);
    }

    #[test]
    fn a_slow_canary_trips_on_latency_only_when_asked_and_both_have_samples() {
        let baseline = window(100, 0, &[(100, 100)]);
        let slow = window(100, 0, &[(400, 100)]);
        assert_eq!(check(&slow, &baseline, &T, false), None);
        assert!(matches!(check(&slow, &baseline, &T, true), Some(Trip::Latency { .. })));
        assert_eq!(check(&window(100, 0, &[(130, 100)]), &baseline, &T, true), None, "within 1.5×");
        assert_eq!(check(&slow, &window(10, 0, &[(100, 10)]), &T, true), None, "baseline sample too small");
    }
}
