//! `mock-upstream`: the mock upstreams as a standalone server, for trying Weir by hand: OpenAI's API
//! under `/v1`, and on the same port Azure OpenAI, the Gemini API, Vertex AI, Bedrock and their
//! OAuth token endpoints (see `weir_bench::mock`). `GET /mock/stats` answers its counters
//! (requests, connections, cancelled streams) as JSON.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use weir_bench::MockUpstream;

/// Serves the mock OpenAI-compatible upstream until Ctrl-C. Model `fixture:<name>` with
/// `"stream": true` replays a recorded OpenAI stream from bench/fixtures/openai/.
#[derive(Debug, Parser)]
#[command(name = "mock-upstream")]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:9000")]
    listen: SocketAddr,
    /// Require this key: `Authorization: Bearer <KEY>` for OpenAI (and a Bedrock API key),
    /// `api-key` for Azure, `x-goog-api-key` for the Gemini API.
    #[arg(long)]
    api_key: Option<String>,
    /// Delay before every response, e.g. 200ms.
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    latency: Duration,
    /// Delay between streamed events, e.g. 20ms.
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    chunk_interval: Duration,
    /// Break every stream (reset the connection) after this many events.
    #[arg(long)]
    break_stream_after: Option<usize>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut builder = MockUpstream::builder()
        .listen(args.listen)
        .latency(args.latency)
        .chunk_interval(args.chunk_interval)
        // A long-lived server must not keep every request it ever saw.
        .record_requests(false);
    if let Some(events) = args.break_stream_after {
        builder = builder.break_stream_after(events);
    }
    if let Some(key) = &args.api_key {
        builder = builder.api_key(key);
    }
    let mock = builder.try_start().await.with_context(|| format!("listening on {}", args.listen))?;
    eprintln!("mock OpenAI upstream at {} (Ctrl-C stops it)", mock.base_url());
    tokio::signal::ctrl_c().await?;
    Ok(())
}
