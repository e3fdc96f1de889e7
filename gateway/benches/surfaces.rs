//! In-process cost of serving each client API, beside the plain Chat Completions relay, on the
//! gateway's own code (`api::*`, `surface::Edge`), no HTTP:
//!
//! - per request: parsing the API's body, building its canonical form (what a translated target
//!   needs), and turning a whole canonical answer into the API's answer — against `ChatRequest::parse`
//!   and the relayed chat answer;
//! - per streamed event: the edge's work on each event of a recorded stream — read (usage, content,
//!   the terminal event) and emit, encoding canonical chunks into Completions, Messages or Responses
//!   events, or reading a natively relayed Messages or Responses stream in its own dialect, and the
//!   canonical decoding plugins get of a native stream — against the chat relay's read and emit.
//!
//! Criterion reports means; a second pass prints the table in bench/README.md (median of 15 rounds).
//!
//! `cargo bench -p weir --bench surfaces`
#![expect(clippy::print_stdout, reason = "a benchmark prints its table")]

use std::collections::VecDeque;
use std::hint::black_box;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{Criterion, criterion_group};
use http::HeaderMap;
use serde_json::json;
use weir::api::sse::{Event, Splitter};
use weir::api::{
    ChatRequest, ClientRequest, CompletionsRequest, MessagesRequest, ModelRequest, ResponsesRequest,
    SurfaceRequest as _, Surfaced, messages, responses,
};
use weir::stream::failover::Peek;
use weir::surface::Edge;

/// A recorded OpenAI chat stream: 38 events of text, the usage chunk, `[DONE]`.
const CHAT_STREAM: &str = include_str!("../../bench/fixtures/openai/text_c.sse");
const MESSAGES_STREAM: &str = include_str!("../../bench/fixtures/anthropic/thinking.sse");
const RESPONSES_STREAM: &str = include_str!("../../bench/fixtures/openai-responses/reasoning_summary.sse");

fn events(sse: &str) -> Vec<Event> {
    let mut splitter = Splitter::default();
    splitter.push(sse.as_bytes());
    std::iter::from_fn(|| splitter.next_event()).collect()
}

fn chat_body() -> Vec<u8> {
    json!({"model": "m", "temperature": 0, "max_tokens": 200, "messages": [
        {"role": "system", "content": "You are a concise assistant."},
        {"role": "user", "content": "What is the capital of France, and why is it there?"}]})
    .to_string()
    .into_bytes()
}

fn completions_body() -> Vec<u8> {
    json!({"model": "m", "temperature": 0, "max_tokens": 200, "prompt": "What is the capital of France, and why is it there?"})
        .to_string()
        .into_bytes()
}

fn messages_body(stream: bool) -> Vec<u8> {
    json!({"model": "m", "max_tokens": 200, "temperature": 0, "stream": stream, "system": "You are a concise assistant.",
        "messages": [{"role": "user", "content": "What is the capital of France, and why is it there?"}]})
    .to_string()
    .into_bytes()
}

fn responses_body(stream: bool) -> Vec<u8> {
    json!({"model": "m", "temperature": 0, "max_output_tokens": 200, "stream": stream, "instructions": "You are a concise assistant.",
        "input": "What is the capital of France, and why is it there?"})
    .to_string()
    .into_bytes()
}

/// A whole canonical answer, as a translated upstream's adapter hands it over.
fn chat_answer() -> Bytes {
    Bytes::from(
        json!({"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "m",
            "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant",
                "content": "Paris is the capital of France. It grew on an island in the Seine, at a crossing of trade routes."}}],
            "usage": {"prompt_tokens": 31, "completion_tokens": 24, "total_tokens": 55}})
        .to_string(),
    )
}

fn request(kind: &str, stream: bool) -> ClientRequest {
    match kind {
        "chat" => ClientRequest::Canonical(ModelRequest::Chat(ChatRequest::parse(&chat_body()).unwrap())),
        "completions" => {
            ClientRequest::Completions(Surfaced::new(CompletionsRequest::parse(&completions_body()).unwrap()))
        }
        "messages" => ClientRequest::Messages(Surfaced::new(
            MessagesRequest::parse(&messages_body(stream), &HeaderMap::new()).unwrap(),
        )),
        _ => ClientRequest::Responses(Surfaced::new(ResponsesRequest::parse(&responses_body(stream)).unwrap())),
    }
}

/// Everything the edge does with one stream's events; returns the bytes the client gets.
fn relay(request: &ClientRequest, native: bool, events: &[Event]) -> usize {
    let mut edge = Edge::new(request, native, None);
    let mut out = VecDeque::new();
    let mut bytes = 0;
    for event in events {
        // The relay reads canonical chunks itself (with what mid-stream failover needs), and asks
        // the edge to read a native stream.
        match edge.peek(event) {
            Some(peek) => {
                black_box(peek);
            }
            None => {
                black_box(Peek::parse(&event.data));
            }
        }
        edge.emit(event.clone(), &mut out);
        bytes += out.drain(..).map(|b| b.len()).sum::<usize>();
    }
    bytes
}

/// What plugins get of a native stream: its canonical form.
fn decode_messages(events: &[Event]) -> usize {
    let mut decoder = messages::Decoder::new("up", "m");
    let mut out = Vec::new();
    for event in events {
        decoder.event(event, &mut out);
    }
    out.len()
}

fn decode_responses(events: &[Event]) -> usize {
    let mut decoder = responses::Decoder::new();
    let mut out = Vec::new();
    for event in events {
        decoder.event(event, &mut out);
    }
    out.len()
}

/// One request's work on the API's side: parse, canonical form, and the whole answer back.
fn whole(kind: &str) -> usize {
    let request = match kind {
        "chat" => {
            let chat = ChatRequest::parse(&chat_body()).unwrap();
            black_box(chat.upstream_body("m").unwrap());
            ClientRequest::Canonical(ModelRequest::Chat(chat))
        }
        "completions" => {
            let r = CompletionsRequest::parse(&completions_body()).unwrap();
            black_box(r.to_chat().unwrap().upstream_body("m").unwrap());
            ClientRequest::Completions(Surfaced::new(r))
        }
        "messages" => {
            let r = MessagesRequest::parse(&messages_body(false), &HeaderMap::new()).unwrap();
            black_box(r.to_chat().unwrap().upstream_body("m").unwrap());
            ClientRequest::Messages(Surfaced::new(r))
        }
        _ => {
            let r = ResponsesRequest::parse(&responses_body(false)).unwrap();
            black_box(r.to_chat().unwrap().upstream_body("m").unwrap());
            ClientRequest::Responses(Surfaced::new(r))
        }
    };
    let mut edge = Edge::new(&request, false, None);
    edge.whole("up", chat_answer(), false).unwrap().body.len()
}

/// The stream cases: name, request, native, events.
fn stream_cases() -> Vec<(String, ClientRequest, bool, Vec<Event>)> {
    let chat = events(CHAT_STREAM);
    vec![
        ("chat relay (baseline)".into(), request("chat", true), false, chat.clone()),
        ("completions, encoded from chat".into(), request("completions", true), false, chat.clone()),
        ("messages, encoded from chat".into(), request("messages", true), false, chat.clone()),
        ("responses, encoded from chat".into(), request("responses", true), false, chat),
        ("messages, native relay (read only)".into(), request("messages", true), true, events(MESSAGES_STREAM)),
        ("responses, native relay (read only)".into(), request("responses", true), true, events(RESPONSES_STREAM)),
    ]
}

fn benches(c: &mut Criterion) {
    let mut group = c.benchmark_group("surfaces");
    for kind in ["chat", "completions", "messages", "responses"] {
        group.bench_function(format!("whole request: {kind}"), |b| b.iter(|| whole(kind)));
    }
    for (name, request, native, events) in stream_cases() {
        group.bench_function(format!("stream of {} events: {name}", events.len()), |b| {
            b.iter(|| relay(&request, native, &events))
        });
    }
    let messages = events(MESSAGES_STREAM);
    group.bench_function("native messages stream decoded for plugins", |b| b.iter(|| decode_messages(&messages)));
    let responses = events(RESPONSES_STREAM);
    group.bench_function("native responses stream decoded for plugins", |b| b.iter(|| decode_responses(&responses)));
    group.finish();
}

/// The median of `rounds` timings of `f` repeated `n` times, per repetition.
fn median(rounds: usize, n: usize, mut f: impl FnMut() -> usize) -> Duration {
    let mut times: Vec<Duration> = (0..rounds)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..n {
                black_box(f());
            }
            start.elapsed() / n as u32
        })
        .collect();
    times.sort();
    times[rounds / 2]
}

fn table() {
    println!("\n| per request (parse, canonical form, whole answer back) | median | vs chat |\n|---|---:|---:|");
    let base = median(15, 2_000, || whole("chat"));
    for kind in ["chat", "completions", "messages", "responses"] {
        let t = median(15, 2_000, || whole(kind));
        println!("| {kind} | {:.2} µs | {:+.2} µs |", us(t), us(t) - us(base));
    }
    println!(
        "\n| per streamed event (read + emit) | events | median per event | vs chat relay |\n|---|---:|---:|---:|"
    );
    let cases = stream_cases();
    let per_event = |(_, request, native, events): &(String, ClientRequest, bool, Vec<Event>)| {
        median(15, 200, || relay(request, *native, events)) / events.len() as u32
    };
    let base = per_event(&cases[0]);
    for case in &cases {
        let t = per_event(case);
        println!("| {} | {} | {:.2} µs | {:+.2} µs |", case.0, case.3.len(), us(t), us(t) - us(base));
    }
    let messages = events(MESSAGES_STREAM);
    let t = median(15, 200, || decode_messages(&messages)) / messages.len() as u32;
    println!(
        "| native messages, decoded for plugins (extra, when one reads responses) | {} | {:.2} µs | |",
        messages.len(),
        us(t)
    );
    let responses = events(RESPONSES_STREAM);
    let t = median(15, 50, || decode_responses(&responses)) / responses.len() as u32;
    println!(
        "| native responses, decoded for plugins (extra, when one reads responses) | {} | {:.2} µs | |",
        responses.len(),
        us(t)
    );
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

criterion_group!(group, benches);

fn main() {
    group();
    table();
    Criterion::default().configure_from_args().final_summary();
}
