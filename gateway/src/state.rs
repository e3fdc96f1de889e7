//! Host state that policies need, so that plugins stay stateless and poolable: a key-value store,
//! quota reservations and the usage ledger — and the Responses API's stored responses. Each has two
//! backends side by side, chosen by `[state] backend`: *embedded* (moka, in-process token buckets,
//! a local ledger file, a local file of stored responses), and *redis* (`state/redis.rs`: one
//! shared Redis for every replica, with the embedded state kept as the fallback that
//! `on_unavailable = "embedded"` serves from while Redis cannot answer; the ledger file and the
//! stored responses' file are also the spools of what Redis did not take).
//!
//! Every call that may go to Redis takes `wait`, the longest it may take: the host passes the
//! smaller of `[state.redis] timeout` and what is left of the calling plugin's deadline, so no
//! request ever waits on Redis longer than that.

pub mod kv;
pub mod ledger;
pub mod quota;
pub mod redis;
pub mod responses;

/// A call that Redis could not answer in time, under `on_unavailable = "fail"`: the host turns
/// it into a fault of the calling plugin, whose `on_error` then decides the request.
#[derive(Debug, thiserror::Error)]
#[error("the shared state (Redis) did not answer {op} in time")]
pub struct Unavailable {
    pub op: &'static str,
}
