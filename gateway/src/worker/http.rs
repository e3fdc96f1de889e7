//! The worker's HTTP surface: `/v1/embeddings`, `/v1/chat/completions`, `/v1/completions` (whole or
//! streamed), `POST /v1/models/{name}:predict` (`{"instances"}` → `{"predictions"}`), `/v1/models`,
//! `/health`, `/load` (queue depth, in flight, tokens/s, for least-busy routing) and `/metrics`.
//! Requests are parsed with the gateway's own API types and errors built by its one error type.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::{Map, Value, json};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use super::engine::{Event, Generation};
use super::sample::Params;
use super::text::{CHAT_STOP, chat_prompt};
use super::{Architecture, Worker};
use crate::api::chat::ChatRequest;
use crate::api::embeddings::{EmbeddingsRequest, EncodingFormat};
use crate::body::{self, Body};
use crate::error::{Error, Kind};

const MAX_BODY: usize = 8 * 1024 * 1024;
const BODY_TIMEOUT: Duration = Duration::from_secs(30);

/// What a worker address serves: a model, or the reason it could not be loaded (so that a gateway
/// with a missing local model still starts, and says why on every request to it).
#[derive(Debug, Clone)]
pub enum Slot {
    Ready(Arc<Worker>),
    Failed(Arc<str>),
}

/// Serves `slot` on `listener` until `shutdown` resolves.
pub async fn serve(listener: TcpListener, slot: Slot, shutdown: impl Future<Output = ()>) -> std::io::Result<()> {
    let builder = Arc::new(auto::Builder::new(TokioExecutor::new()));
    tokio::pin!(shutdown);
    loop {
        let (tcp, _) = tokio::select! {
            () = &mut shutdown => return Ok(()),
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "worker accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        let (slot, builder) = (slot.clone(), builder.clone());
        tokio::spawn(async move {
            let service = service_fn(move |request| handle(slot.clone(), request));
            let _ = builder.serve_connection(TokioIo::new(tcp), service).await;
        });
    }
}

/// One request to a worker.
pub async fn handle(slot: Slot, request: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let response = match route(slot, request).await {
        Ok(r) => r,
        Err(e) => {
            if e.kind == Kind::Internal {
                tracing::warn!(error = %e, "worker request failed");
            }
            e.into_response()
        }
    };
    Ok(response)
}

async fn route(slot: Slot, request: Request<Incoming>) -> Result<Response<Body>, Error> {
    let (parts, incoming) = request.into_parts();
    let path = parts.uri.path().to_owned();
    let worker = match slot {
        Slot::Ready(w) => w,
        Slot::Failed(why) => {
            return Err(Error::new(Kind::UpstreamUnavailable, format!("The local model is not available: {why}"))
                .code("model_unavailable"));
        }
    };
    let post = parts.method == Method::POST;
    if !post && parts.method != Method::GET {
        return Err(Error::new(Kind::MethodNotAllowed, format!("{} is not allowed here.", parts.method)));
    }
    let body = if post {
        crate::api::read_body(incoming, &parts.headers, MAX_BODY, BODY_TIMEOUT).await?
    } else {
        Bytes::new()
    };
    match (post, path.as_str()) {
        (false, "/health") => Ok(json_response(&json!({
            "status": "ok", "model": worker.name, "device": worker.device, "architecture": format!("{:?}", worker.architecture).to_lowercase(),
        }))),
        (false, "/load") => Ok(json_response(&load(&worker))),
        (false, "/metrics") => Ok(text_response(metrics(&worker))),
        (false, "/v1/models") => Ok(json_response(&json!({
            "object": "list", "data": [{"id": worker.name, "object": "model", "created": 0, "owned_by": "weir-worker"}],
        }))),
        (true, "/v1/embeddings") => embeddings(&worker, &body).await,
        (true, "/v1/chat/completions") => chat(&worker, &body).await,
        (true, "/v1/completions") => completions(&worker, &body).await,
        (true, p) if p.starts_with("/v1/models/") && p.ends_with(":predict") => predict(&worker, &body).await,
        (true, p) if p.starts_with("/v1/models/") && p.ends_with(":rawPredict") => {
            raw_predict(&worker, &parts.headers, &body).await
        }
        _ => Err(Error::new(Kind::NotFound, format!("Unknown path {path}.")).code("unknown_url")),
    }
}

fn unsupported(worker: &Worker, what: &str) -> Error {
    let serves = match worker.architecture {
        Architecture::Bert => "embeddings (/v1/embeddings)",
        Architecture::Gpt2 => "text generation (/v1/chat/completions, /v1/completions)",
        Architecture::Mlp => "predictions (/v1/models/{name}:predict)",
    };
    Error::bad_request(format!("The model '{}' does not do {what}; it serves {serves}.", worker.name))
        .param("model")
        .code("unsupported_model")
}

async fn embeddings(worker: &Worker, body: &[u8]) -> Result<Response<Body>, Error> {
    let request = EmbeddingsRequest::parse(body)?;
    let (Architecture::Bert, Some(text)) = (worker.architecture, &worker.text) else {
        return Err(unsupported(worker, "embeddings"));
    };
    if let Some(d) = request.extra.get("dimensions").filter(|d| !d.is_null())
        && d.as_u64() != Some(worker.width as u64)
    {
        return Err(Error::bad_request(format!("This model makes {}-dimensional embeddings only.", worker.width))
            .param("dimensions")
            .code("invalid_value"));
    }
    let ids_of = |v: &Value| -> Vec<u32> {
        v.as_array().into_iter().flatten().filter_map(Value::as_u64).map(|n| n as u32).collect()
    };
    let inputs: Vec<Vec<u32>> = match &request.input {
        Value::String(s) => vec![encode(text, s, "input")?],
        Value::Array(items) if items.iter().all(Value::is_string) => items
            .iter()
            .enumerate()
            .map(|(i, s)| encode(text, s.as_str().unwrap_or_default(), &format!("input[{i}]")))
            .collect::<Result<_, _>>()?,
        Value::Array(items) if items.iter().all(Value::is_u64) => vec![ids_of(&request.input)],
        Value::Array(items) => items.iter().map(ids_of).collect(),
        _ => Vec::new(),
    };
    let vocab = text.vocab_size() as u32;
    for (i, ids) in inputs.iter().enumerate() {
        if ids.len() > worker.max_tokens {
            return Err(Error::bad_request(format!(
                "input[{i}] is {} tokens long; this model reads at most {} tokens.",
                ids.len(),
                worker.max_tokens
            ))
            .param("input")
            .code("context_length_exceeded"));
        }
        if ids.iter().any(|&id| id >= vocab) {
            return Err(Error::bad_request(format!("input[{i}] has a token id outside the vocabulary (0..{vocab})."))
                .param("input")
                .code("invalid_value"));
        }
    }
    let tokens: usize = inputs.iter().map(Vec::len).sum();
    let vectors = worker.embed(inputs).await.map_err(Error::internal)?;
    let base64 = request.encoding_format == Some(EncodingFormat::Base64);
    let data: Vec<Value> = vectors
        .iter()
        .enumerate()
        .map(|(index, v)| {
            let embedding = if base64 {
                let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                Value::String(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                json!(v)
            };
            json!({"object": "embedding", "index": index, "embedding": embedding})
        })
        .collect();
    Ok(json_response(&json!({
        "object": "list", "data": data, "model": worker.name,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    })))
}

fn encode(text: &super::text::Text, s: &str, param: &str) -> Result<Vec<u32>, Error> {
    text.encode(s).map_err(|e| Error::bad_request(e).param(param).code("invalid_value"))
}

/// `:rawPredict`: a CSV body (`text/csv`, one instance per line, the features in the model's
/// order, an optional header line naming them) or a `:predict` JSON body; the answer is JSON.
async fn raw_predict(worker: &Worker, headers: &http::HeaderMap, body: &[u8]) -> Result<Response<Body>, Error> {
    let essence = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or_default().trim().to_ascii_lowercase());
    match essence.as_deref() {
        Some("text/csv") => {
            if worker.architecture != Architecture::Mlp {
                return Err(unsupported(worker, "predictions"));
            }
            let text = std::str::from_utf8(body)
                .map_err(|_| Error::bad_request("The CSV body is not UTF-8.").code("invalid_value"))?;
            let rows: Vec<Value> = text
                .lines()
                .map(str::trim)
                .filter(|line| !line.is_empty())
                .enumerate()
                .filter(|(i, line)| *i > 0 || line.split(',').all(|cell| cell.trim().parse::<f64>().is_ok()))
                .map(|(i, line)| {
                    line.split(',')
                        .map(|cell| {
                            cell.trim().parse::<f64>().map(|v| json!(v)).map_err(|_| {
                                Error::bad_request(format!("CSV line {} holds a value that is not a number.", i + 1))
                                    .code("invalid_value")
                            })
                        })
                        .collect::<Result<Vec<_>, _>>()
                        .map(Value::Array)
                })
                .collect::<Result<_, _>>()?;
            if rows.is_empty() {
                return Err(Error::bad_request("The CSV body holds no rows.").code("invalid_value"));
            }
            predict_rows(worker, &rows).await
        }
        Some("application/json") | None => predict(worker, body).await,
        Some(other) => Err(Error::bad_request(format!(
            "This worker predicts on text/csv or application/json bodies, not {other}."
        ))
        .code("unsupported_media_type")),
    }
}

async fn predict(worker: &Worker, body: &[u8]) -> Result<Response<Body>, Error> {
    if worker.architecture != Architecture::Mlp {
        return Err(unsupported(worker, "predictions"));
    }
    let request: Map<String, Value> = crate::api::parse_json(body)?;
    let instances = match request.get("instances") {
        Some(Value::Array(items)) if !items.is_empty() => items,
        Some(_) => {
            return Err(Error::bad_request("'instances' must be a non-empty array.")
                .param("instances")
                .code("invalid_value"));
        }
        None => {
            return Err(Error::bad_request("Missing required parameter: 'instances'.")
                .param("instances")
                .code("missing_required_parameter"));
        }
    };
    predict_rows(worker, instances).await
}

async fn predict_rows(worker: &Worker, instances: &[Value]) -> Result<Response<Body>, Error> {
    let rows = instances
        .iter()
        .enumerate()
        .map(|(i, v)| worker.read_instance(v, i))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Error::bad_request(e).param("instances").code("invalid_value"))?;
    let outputs = worker.predict(rows).await.map_err(Error::internal)?;
    let predictions: Vec<Value> =
        outputs.into_iter().map(|o| if o.len() == 1 { json!(o[0]) } else { json!(o) }).collect();
    Ok(json_response(&json!({"predictions": predictions, "deployedModelId": worker.name})))
}

/// Generation settings read from a chat or completions request.
struct GenRequest {
    prompt: Vec<u32>,
    max_tokens: usize,
    params: Params,
    seed: u64,
    stops: Vec<String>,
    stream: bool,
    include_usage: bool,
    /// Completions' `echo`: the prompt, sent before the generated text.
    echo: Option<String>,
}

fn gen_request(
    worker: &Worker,
    prompt: &str,
    extra: &Map<String, Value>,
    stream: bool,
    include_usage: bool,
    mut stops: Vec<String>,
) -> Result<GenRequest, Error> {
    let Some(text) = &worker.text else { return Err(Error::internal("a generator without a tokenizer")) };
    let bad = |param: &str, message: String| Error::bad_request(message).param(param).code("invalid_value");
    let number = |key: &str| -> Result<Option<f64>, Error> {
        match extra.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v.as_f64().map(Some).ok_or_else(|| bad(key, format!("'{key}' must be a number."))),
        }
    };
    let uint = |key: &str| -> Result<Option<u64>, Error> {
        match extra.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v.as_u64().map(Some).ok_or_else(|| bad(key, format!("'{key}' must be a non-negative integer."))),
        }
    };
    let temperature = number("temperature")?.unwrap_or(1.0);
    if !(0.0..=2.0).contains(&temperature) {
        return Err(bad("temperature", "'temperature' must be between 0 and 2.".into()));
    }
    let top_p = number("top_p")?.unwrap_or(1.0);
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(bad("top_p", "'top_p' must be greater than 0 and at most 1.".into()));
    }
    let top_k = uint("top_k")?.unwrap_or(0) as usize;
    if let Some(n) = uint("n")?
        && n != 1
    {
        return Err(bad("n", "This worker generates one choice per request ('n' must be 1).".into()));
    }
    let max_tokens = match uint("max_completion_tokens")?.or(uint("max_tokens")?) {
        Some(0) => return Err(bad("max_tokens", "'max_tokens' must be at least 1.".into())),
        Some(n) => n as usize,
        None => usize::MAX,
    };
    let seed = match extra.get("seed") {
        None | Some(Value::Null) => rand::random(),
        Some(v) => v
            .as_i64()
            .map(|s| s as u64)
            .or(v.as_u64())
            .ok_or_else(|| bad("seed", "'seed' must be an integer.".into()))?,
    };
    match extra.get("stop") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) => stops.push(s.clone()),
        Some(Value::Array(items)) if items.len() <= 4 && items.iter().all(Value::is_string) => {
            stops.extend(items.iter().filter_map(Value::as_str).map(str::to_owned));
        }
        Some(_) => return Err(bad("stop", "'stop' must be a string or an array of at most 4 strings.".into())),
    }
    let ids = encode(text, prompt, "prompt")?;
    if ids.is_empty() {
        return Err(bad("prompt", "The prompt is empty.".into()));
    }
    if ids.len() >= worker.max_tokens {
        return Err(Error::bad_request(format!(
            "The prompt is {} tokens long; this model's context window is {} tokens, and it needs room for at least one more.",
            ids.len(),
            worker.max_tokens
        ))
        .param("messages")
        .code("context_length_exceeded"));
    }
    Ok(GenRequest {
        prompt: ids,
        max_tokens,
        params: Params { temperature: temperature as f32, top_k, top_p: top_p as f32 },
        seed,
        stops,
        stream,
        include_usage,
        echo: None,
    })
}

async fn chat(worker: &Worker, body: &[u8]) -> Result<Response<Body>, Error> {
    let request = ChatRequest::parse(body)?;
    if worker.architecture != Architecture::Gpt2 {
        return Err(unsupported(worker, "text generation"));
    }
    let prompt =
        chat_prompt(&request.messages).map_err(|e| Error::bad_request(e).param("messages").code("invalid_value"))?;
    let g = gen_request(
        worker,
        &prompt,
        &request.extra,
        request.is_stream(),
        request.client_wants_usage(),
        vec![CHAT_STOP.to_owned()],
    )?;
    run_generation(worker, g, Shape::Chat).await
}

async fn completions(worker: &Worker, body: &[u8]) -> Result<Response<Body>, Error> {
    let mut request: Map<String, Value> = crate::api::parse_json(body)?;
    if worker.architecture != Architecture::Gpt2 {
        return Err(unsupported(worker, "text generation"));
    }
    let prompt = match request.remove("prompt") {
        Some(Value::String(s)) => s,
        Some(Value::Array(mut items)) if items.len() == 1 && items[0].is_string() => {
            items.pop().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()
        }
        Some(_) => {
            return Err(Error::bad_request("'prompt' must be a string (one prompt per request).")
                .param("prompt")
                .code("invalid_value"));
        }
        None => {
            return Err(Error::bad_request("Missing required parameter: 'prompt'.")
                .param("prompt")
                .code("missing_required_parameter"));
        }
    };
    let stream = match request.get("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(Error::bad_request("'stream' must be a boolean.").param("stream").code("invalid_value")),
    };
    let include_usage =
        request.get("stream_options").and_then(|o| o.get("include_usage")).and_then(Value::as_bool) == Some(true);
    // What the legacy API offers beyond a prompt: `echo` is done here; insertion and token
    // log-probabilities this worker cannot give, and says so rather than ignoring them.
    if request.get("suffix").and_then(Value::as_str).is_some_and(|s| !s.is_empty()) {
        return Err(Error::bad_request("This worker does not support 'suffix' (insertion); send the prompt alone.")
            .param("suffix")
            .code("unsupported_parameter"));
    }
    if request.get("logprobs").is_some_and(|v| !v.is_null()) {
        return Err(Error::bad_request("This worker does not return 'logprobs'.")
            .param("logprobs")
            .code("unsupported_parameter"));
    }
    let echo = match request.get("echo") {
        None | Some(Value::Null | Value::Bool(false)) => None,
        Some(Value::Bool(true)) => Some(prompt.clone()),
        Some(_) => return Err(Error::bad_request("'echo' must be a boolean.").param("echo").code("invalid_value")),
    };
    let mut g = gen_request(worker, &prompt, &request, stream, include_usage, Vec::new())?;
    g.echo = echo;
    run_generation(worker, g, Shape::Completion).await
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Shape {
    Chat,
    Completion,
}

async fn run_generation(worker: &Worker, g: GenRequest, shape: Shape) -> Result<Response<Body>, Error> {
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let prompt_tokens = g.prompt.len();
    worker
        .generate(Generation {
            prompt: g.prompt,
            max_tokens: g.max_tokens,
            params: g.params,
            seed: g.seed,
            stops: g.stops,
            events: events_tx,
        })
        .map_err(Error::internal)?;
    let (prefix, object) = match shape {
        Shape::Chat => ("chatcmpl", "chat.completion"),
        Shape::Completion => ("cmpl", "text_completion"),
    };
    let id = format!("{prefix}-{}", uuid::Uuid::now_v7().simple());
    let created = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let model = worker.name.clone();
    let usage = move |completion: usize| json!({"prompt_tokens": prompt_tokens, "completion_tokens": completion, "total_tokens": prompt_tokens + completion});

    if !g.stream {
        // Dropping `events` (this future dropped by a client that went away) stops the generation.
        let mut content = String::new();
        loop {
            match events.recv().await {
                Some(Event::Delta(d)) => content.push_str(&d),
                Some(Event::Done { finish_reason, completion_tokens }) => {
                    let choice = match shape {
                        Shape::Chat => {
                            json!({"index": 0, "message": {"role": "assistant", "content": content}, "logprobs": null, "finish_reason": finish_reason})
                        }
                        Shape::Completion => {
                            let text = format!("{}{content}", g.echo.as_deref().unwrap_or_default());
                            json!({"index": 0, "text": text, "logprobs": null, "finish_reason": finish_reason})
                        }
                    };
                    return Ok(json_response(&json!({
                        "id": id, "object": object, "created": created, "model": model,
                        "choices": [choice], "usage": usage(completion_tokens),
                    })));
                }
                Some(Event::Failed(why)) => return Err(Error::internal(why)),
                None => return Err(Error::internal("the model thread dropped the request")),
            }
        }
    }

    let chunk_object = match shape {
        Shape::Chat => "chat.completion.chunk",
        Shape::Completion => "text_completion",
    };
    let chunk = move |choice: Value, usage: Option<Value>| -> Bytes {
        let mut c = json!({"id": id, "object": chunk_object, "created": created, "model": model, "choices": choice});
        if let Some(u) = usage {
            c["usage"] = u;
        }
        Bytes::from(format!("data: {c}\n\n"))
    };
    let (tx, rx) = mpsc::channel::<Bytes>(64);
    let include_usage = g.include_usage;
    let echo = g.echo;
    tokio::spawn(async move {
        if let Some(echo) = echo
            && tx.send(chunk(delta(shape, &echo, None), None)).await.is_err()
        {
            return;
        }
        if shape == Shape::Chat {
            let first = json!([{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": null, "finish_reason": null}]);
            if tx.send(chunk(first, None)).await.is_err() {
                return;
            }
        }
        while let Some(event) = events.recv().await {
            let bytes = match event {
                Event::Delta(d) => chunk(delta(shape, &d, None), None),
                Event::Done { finish_reason, completion_tokens } => {
                    let mut out = chunk(delta(shape, "", Some(finish_reason)), None).to_vec();
                    if include_usage {
                        out.extend_from_slice(&chunk(json!([]), Some(usage(completion_tokens))));
                    }
                    out.extend_from_slice(b"data: [DONE]\n\n");
                    let _ = tx.send(Bytes::from(out)).await;
                    return;
                }
                Event::Failed(why) => {
                    let _ = tx.send(Error::internal(why).sse_event()).await;
                    return;
                }
            };
            // A send that fails means the client went away: returning drops `events`, which stops
            // the generation on the model thread.
            if tx.send(bytes).await.is_err() {
                return;
            }
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
    });
    let mut response = Response::new(http_body_util::StreamBody::new(stream).boxed_unsync());
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Ok(response)
}

fn delta(shape: Shape, text: &str, finish: Option<&str>) -> Value {
    match shape {
        Shape::Chat => {
            let delta = if finish.is_some() { json!({}) } else { json!({"content": text}) };
            json!([{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}])
        }
        Shape::Completion => json!([{"index": 0, "text": text, "logprobs": null, "finish_reason": finish}]),
    }
}

fn load(worker: &Worker) -> Value {
    let s = &worker.stats;
    json!({
        "model": worker.name,
        "queue_depth": s.queued.load(Ordering::Relaxed),
        "in_flight": s.in_flight.load(Ordering::Relaxed),
        "tokens_per_second": s.tokens_per_second(),
    })
}

fn metrics(worker: &Worker) -> String {
    let s = &worker.stats;
    let model = &worker.name;
    let mut out = String::new();
    let mut line = |name: &str, kind: &str, help: &str, value: String| {
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n{name}{{model=\"{model}\"}} {value}\n"));
    };
    line(
        "weir_worker_queue_depth",
        "gauge",
        "Jobs waiting for the model thread.",
        s.queued.load(Ordering::Relaxed).to_string(),
    );
    line(
        "weir_worker_in_flight",
        "gauge",
        "Jobs the model thread is working on.",
        s.in_flight.load(Ordering::Relaxed).to_string(),
    );
    line(
        "weir_worker_tokens_per_second",
        "gauge",
        "Generated tokens per second, recently.",
        s.tokens_per_second().to_string(),
    );
    line(
        "weir_worker_generated_tokens_total",
        "counter",
        "Tokens generated.",
        s.tokens_generated.load(Ordering::Relaxed).to_string(),
    );
    line(
        "weir_worker_decode_steps_total",
        "counter",
        "Batched decode steps (each advances every active generation by one token).",
        s.decode_steps.load(Ordering::Relaxed).to_string(),
    );
    line(
        "weir_worker_embedded_sequences_total",
        "counter",
        "Sequences embedded.",
        s.sequences_embedded.load(Ordering::Relaxed).to_string(),
    );
    line(
        "weir_worker_predicted_instances_total",
        "counter",
        "Instances predicted.",
        s.instances_predicted.load(Ordering::Relaxed).to_string(),
    );
    line(
        "weir_worker_batches_total",
        "counter",
        "Embedding and prediction batches run.",
        s.batches.load(Ordering::Relaxed).to_string(),
    );
    out
}

fn json_response(value: &Value) -> Response<Body> {
    let mut r = Response::new(body::full(serde_json::to_vec(value).unwrap_or_default()));
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

fn text_response(text: String) -> Response<Body> {
    let mut r = Response::new(body::full(text));
    *r.status_mut() = StatusCode::OK;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4"));
    r
}
