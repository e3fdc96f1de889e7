//! Integration tests: the gateway started in-process on port 0 in front of the mock upstreams of
//! `weir-bench`, driven through its real HTTP surface by real clients (async-openai, reqwest, and the
//! official `openai` Python SDK). One test binary, so the crates are linked once.

mod azure;
mod bedrock;
mod cache;
mod canary;
mod chat;
mod completions;
mod content;
mod contract;
mod deploy;
mod durability;
mod embed;
mod errors;
mod failover;
mod gemini;
mod guard;
mod hardening;
mod isolation;
mod messages;
mod plugins;
mod policies;
mod predict;
mod processes;
mod python;
mod replicas;
mod responses;
mod server;
mod streams;
mod support;
mod surfaces;
