//! A circuit breaker for a plugin's code, and the rate limit on its fault log lines.
//!
//! A plugin that keeps faulting costs every request that runs it a deadline's worth of a worker
//! (a loop), an instance (a trap) or both. After `quarantine.faults` faults within
//! `quarantine.window` its hooks are skipped for `quarantine.cooldown`, as its `on_error` says; a
//! fault within a window after the cooldown quarantines it again at once, for twice as long (up to
//! [`MAX_COOLDOWN_FACTOR`] times the configured cooldown). The check on the hot path is one atomic
//! load; the bookkeeping takes a lock only when a fault happens.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use weir_config::Quarantine as Settings;

/// How much longer than configured a repeated quarantine may last.
const MAX_COOLDOWN_FACTOR: u32 = 16;

/// Fault lines one plugin may log in a burst, and per second after it; the rest are counted and
/// reported with the next line that is written.
const FAULT_LOG_BURST: f64 = 10.0;
const FAULT_LOG_PER_SEC: f64 = 1.0;

/// What a fault did to the plugin's standing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    /// Still in service.
    InService,
    /// This fault quarantined it, for this long.
    Quarantined(Duration),
}

/// One plugin version's record of faults.
#[derive(Debug)]
pub struct Health {
    settings: Settings,
    /// Milliseconds after [`epoch`] until which the plugin is quarantined; 0 when it is not.
    until_ms: AtomicU64,
    state: Mutex<State>,
    log: Mutex<LogBudget>,
}

#[derive(Debug)]
struct State {
    /// Faults within the window, oldest first.
    faults: VecDeque<Instant>,
    /// The cooldown of the last quarantine.
    cooldown: Duration,
    /// Until when a single fault quarantines the plugin again (the window after a cooldown).
    probation_until: Option<Instant>,
    /// When the current quarantine ends.
    until: Option<Instant>,
}

#[derive(Debug)]
struct LogBudget {
    tokens: f64,
    at: Instant,
    suppressed: u64,
}

/// The process's origin for the millisecond timestamps.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn ms_since_epoch(at: Instant) -> u64 {
    // +1 so that a quarantine never ends at 0, which means "none".
    u64::try_from(at.saturating_duration_since(epoch()).as_millis()).unwrap_or(u64::MAX).saturating_add(1)
}

impl Health {
    pub fn new(settings: Settings) -> Self {
        epoch();
        Self {
            settings,
            until_ms: AtomicU64::new(0),
            state: Mutex::new(State {
                faults: VecDeque::new(),
                cooldown: settings.cooldown,
                probation_until: None,
                until: None,
            }),
            log: Mutex::new(LogBudget { tokens: FAULT_LOG_BURST, at: Instant::now(), suppressed: 0 }),
        }
    }

    /// Whether the plugin is quarantined now; `Some(remaining)` if so. `released` is called once
    /// when a quarantine is found to be over.
    pub fn quarantined(&self, released: impl FnOnce()) -> Option<Duration> {
        let until = self.until_ms.load(Ordering::Relaxed);
        if until == 0 {
            return None;
        }
        let now = ms_since_epoch(Instant::now());
        if now < until {
            return Some(Duration::from_millis(until - now));
        }
        // Over: the first caller to notice releases it; the window after it is probation.
        if self.until_ms.compare_exchange(until, 0, Ordering::Relaxed, Ordering::Relaxed).is_ok() {
            let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(ended) = state.until.take() {
                state.probation_until = Some(ended + self.settings.window);
            }
            drop(state);
            released();
        }
        None
    }

    /// Records a fault; says whether it quarantined the plugin.
    pub fn fault(&self) -> Standing {
        if self.settings.faults == 0 {
            return Standing::InService;
        }
        let now = Instant::now();
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.until.is_some_and(|until| now < until) {
            // A call that started before the quarantine: it changes nothing.
            return Standing::InService;
        }
        if let Some(ended) = state.until.take() {
            // Over, but no call has noticed yet.
            state.probation_until = Some(ended + self.settings.window);
        }
        let window = self.settings.window;
        while state.faults.front().is_some_and(|at| now.duration_since(*at) > window) {
            state.faults.pop_front();
        }
        state.faults.push_back(now);
        let on_probation = state.probation_until.is_some_and(|until| now < until);
        if !on_probation && state.faults.len() < self.settings.faults as usize {
            return Standing::InService;
        }
        let cooldown = if on_probation {
            (state.cooldown * 2).min(self.settings.cooldown * MAX_COOLDOWN_FACTOR)
        } else {
            self.settings.cooldown
        };
        state.cooldown = cooldown;
        state.faults.clear();
        state.probation_until = None;
        state.until = Some(now + cooldown);
        self.until_ms.store(ms_since_epoch(now + cooldown), Ordering::Relaxed);
        Standing::Quarantined(cooldown)
    }

    /// Whether a fault may be logged now; `Some(lines suppressed since the last one)` if so.
    pub fn may_log(&self) -> Option<u64> {
        let mut log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        log.tokens = (log.tokens + now.duration_since(log.at).as_secs_f64() * FAULT_LOG_PER_SEC).min(FAULT_LOG_BURST);
        log.at = now;
        if log.tokens >= 1.0 {
            log.tokens -= 1.0;
            Some(std::mem::take(&mut log.suppressed))
        } else {
            log.suppressed += 1;
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(faults: u32, cooldown_ms: u64) -> Settings {
        Settings { faults, window: Duration::from_secs(60), cooldown: Duration::from_millis(cooldown_ms) }
    }

    #[test]
    fn n_faults_within_the_window_quarantine_until_the_cooldown_ends() {
        let health = Health::new(settings(3, 80));
        assert_eq!(health.fault(), Standing::InService);
        assert_eq!(health.fault(), Standing::InService);
        assert!(health.quarantined(|| panic!("not quarantined")).is_none());
        assert_eq!(health.fault(), Standing::Quarantined(Duration::from_millis(80)));
        assert!(health.quarantined(|| panic!("not over")).is_some());
        assert_eq!(health.fault(), Standing::InService, "a fault during a quarantine changes nothing");
        std::thread::sleep(Duration::from_millis(120));
        let mut released = 0;
        assert!(health.quarantined(|| released += 1).is_none());
        assert!(health.quarantined(|| released += 1).is_none());
        assert_eq!(released, 1, "released once");
        // On probation: one fault is enough, and the cooldown doubles.
        assert_eq!(health.fault(), Standing::Quarantined(Duration::from_millis(160)));
    }

    #[test]
    fn zero_faults_never_quarantines() {
        let health = Health::new(settings(0, 10));
        for _ in 0..100 {
            assert_eq!(health.fault(), Standing::InService);
        }
        assert!(health.quarantined(|| {}).is_none());
    }

    #[test]
    fn repeated_cooldowns_are_capped() {
        let health = Health::new(settings(1, 1));
        let mut last = Duration::ZERO;
        for _ in 0..10 {
            if let Standing::Quarantined(d) = health.fault() {
                last = d;
            }
            std::thread::sleep(last + Duration::from_millis(2));
            health.quarantined(|| {});
        }
        assert_eq!(last, Duration::from_millis(16));
    }

    #[test]
    fn fault_lines_are_rate_limited_and_count_what_they_drop() {
        let health = Health::new(settings(0, 10));
        let written = (0..100).filter(|_| health.may_log().is_some()).count();
        assert_eq!(written, FAULT_LOG_BURST as usize);
        std::thread::sleep(Duration::from_millis(1100));
        assert_eq!(health.may_log(), Some(100 - FAULT_LOG_BURST as u64));
    }
}
