//! Host state that policies need, so that plugins stay stateless and poolable: a key-value store,
//! quota reservations and the usage ledger — and the Responses API's stored responses. Embedded in the process for now (moka, in-process token
//! buckets, an append-only file); the Redis-backed variants for several replicas arrive with the
//! scale-out work and will sit behind the same calls.

pub mod kv;
pub mod ledger;
pub mod quota;
pub mod responses;
