//! Prediction traffic through the real gateway: `:predict` and `:rawPredict` to a local worker
//! (the fraud-score MLP, checked against PyTorch's answers) and to SageMaker's mock (SigV4 checked,
//! variants pinned, CSV in and out, `ModelError` mapped); failures falling back along the target
//! chain; a 90/10 canary between the worker and the SageMaker endpoint with sticky customers,
//! rolled back when the canary fails; an instance limit that holds exactly.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use serde_json::{Value, json};
use weir_bench::mock::{MockUpstream, sagemaker_score};

use crate::support::{TestGateway, metric_eventually, openai_error};

fn fraud_mlp() -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/worker/fraud-mlp").display().to_string()
}

/// PyTorch's instances and predictions for the fraud MLP (`tests/worker_reference.py`).
fn reference() -> (Vec<Vec<f64>>, Vec<f64>) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/worker/mlp.json");
    let want: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let rows = want["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect())
        .collect();
    (rows, want["predictions"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect())
}

/// Upstreams: `local` (the fraud MLP in-process) and `sm` (SageMaker's mock, signed with static
/// keys); models `fraud` (the worker), `fraud-cloud` (the endpoint), `fraud-cloud-canary` (its
/// `canary` variant pinned), `fraud-rescued` (the endpoint, then the worker), `chat` (an
/// OpenAI-compatible upstream); `top` goes before every table, `server` into `[server]`, `extra`
/// at the end.
fn config(mock: &MockUpstream, top: &str, server: &str, extra: &str) -> String {
    format!(
        r#"
{top}

[server]
listen = "127.0.0.1:0"
shutdown_grace = "5s"
{server}

[retry]
backoff_base = "5ms"
backoff_max = "20ms"

[[upstreams]]
name = "local"
kind = "worker"
model = "{mlp}"
device = "cpu"

[[upstreams]]
name = "sm"
kind = "sagemaker"
endpoint = "http://{addr}"
region = "us-east-1"
access_key_id = "AKIDPREDICT"
secret_access_key = "predict-secret"

[[upstreams]]
name = "chatty"
endpoint = "http://{addr}/v1"

[[models]]
name = "fraud"
targets = [{{ upstream = "local", model = "fraud-mlp" }}]

[[models]]
name = "fraud-cloud"
targets = [{{ upstream = "sm", model = "fraud-endpoint" }}]

[[models]]
name = "fraud-cloud-canary"
targets = [{{ upstream = "sm", model = "fraud-endpoint:canary" }}]

[[models]]
name = "fraud-rescued"
targets = [{{ upstream = "sm", model = "fraud-endpoint" }}, {{ upstream = "local", model = "fraud-mlp" }}]

[[models]]
name = "chat"
targets = [{{ upstream = "chatty", model = "mock-model" }}]
{extra}
"#,
        mlp = fraud_mlp(),
        addr = mock.addr(),
    )
}

async fn sagemaker_mock() -> MockUpstream {
    MockUpstream::builder().aws_credentials("AKIDPREDICT", "predict-secret").start().await
}

/// POSTs `body` with `content_type` (and `accept`, more `headers`) to `path`; returns the status,
/// headers and raw body.
async fn send(
    client: &reqwest::Client,
    gw: &TestGateway,
    path: &str,
    content_type: &str,
    body: impl Into<reqwest::Body>,
    headers: &[(&str, &str)],
) -> (u16, reqwest::header::HeaderMap, Vec<u8>) {
    let mut request = client.post(gw.url(path)).header("content-type", content_type).body(body);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.expect("send");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    (status, headers, response.bytes().await.expect("body").to_vec())
}

async fn predict(client: &reqwest::Client, gw: &TestGateway, model: &str, body: &Value) -> (u16, Value) {
    let (status, _, bytes) =
        send(client, gw, &format!("/v1/models/{model}:predict"), "application/json", body.to_string(), &[]).await;
    (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array().unwrap_or_else(|| panic!("not an array: {v}")).iter().map(|x| x.as_f64().unwrap()).collect()
}

fn assert_close(got: &[f64], want: &[f64]) {
    assert_eq!(got.len(), want.len(), "{got:?} vs {want:?}");
    for (g, w) in got.iter().zip(want) {
        assert!((g - w).abs() <= 1e-4, "{got:?} vs {want:?}");
    }
}

#[tokio::test]
async fn a_local_worker_predicts_json_and_csv_through_the_gateway() {
    let mock = sagemaker_mock().await;
    let gw = TestGateway::start(&config(&mock, "", "", "")).await;
    let client = reqwest::Client::new();
    let (rows, want) = reference();

    let (status, headers, bytes) =
        send(&client, &gw, "/v1/models/fraud:predict", "application/json", json!({"instances": rows}).to_string(), &[])
            .await;
    let answer: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(status, 200, "{answer}");
    assert_close(&floats(&answer["predictions"]), &want);
    assert_eq!((answer["model"].as_str(), answer["deployedModelId"].as_str()), (Some("fraud"), Some("fraud-mlp")));
    assert_eq!(headers["x-weir-deployed-model"], "fraud-mlp");

    // The same rows as CSV (with a header line naming the features), answered in JSON.
    let csv: String = std::iter::once("amount,hour,merchant_risk,distance_km,new_device,failed_attempts".to_owned())
        .chain(rows.iter().map(|r| r.iter().map(f64::to_string).collect::<Vec<_>>().join(",")))
        .map(|line| line + "\n")
        .collect();
    let (status, headers, bytes) = send(&client, &gw, "/v1/models/fraud:rawPredict", "text/csv", csv, &[]).await;
    let raw: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&bytes));
    assert_eq!(headers["content-type"], "application/json");
    assert_close(&floats(&raw["predictions"]), &want);

    // Instances are counted per model and target, both kinds of request.
    let counted = metric_eventually(
        &gw,
        "weir_predicted_instances_total",
        &[("model", "fraud"), ("target", "local/fraud-mlp")],
        6.0,
    )
    .await;
    assert_eq!(counted, 6.0);
}

#[tokio::test]
async fn sagemaker_endpoints_are_invoked_signed_with_variants_and_raw_payloads() {
    let mock = sagemaker_mock().await;
    let gw = TestGateway::start(&config(&mock, "", "", "")).await;
    let client = reqwest::Client::new();

    let body = json!({"instances": [[10, 20], [-50, 0]], "parameters": {"threshold": 0.5}});
    let (status, headers, bytes) = send(
        &client,
        &gw,
        "/v1/models/fraud-cloud:predict",
        "application/json",
        body.to_string(),
        &[
            ("x-amzn-sagemaker-custom-attributes", "trace=abc"),
            // A client may not pick the model the gateway's credentials invoke.
            ("x-amzn-sagemaker-target-model", "someone-elses-model.tar.gz"),
        ],
    )
    .await;
    let answer: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        answer,
        json!({"predictions": [sagemaker_score(&[10.0, 20.0]), sagemaker_score(&[-50.0, 0.0])], "model": "fraud-cloud", "deployedModelId": "primary"})
    );
    assert_eq!(headers["x-weir-deployed-model"], "primary");
    let sent = mock.requests().pop().expect("the endpoint was invoked");
    assert_eq!(sent.path, "/endpoints/fraud-endpoint/invocations");
    assert_eq!(sent.json(), body, "instances and parameters as the client sent them");
    assert_eq!(
        (sent.header("content-type"), sent.header("accept")),
        (Some("application/json"), Some("application/json"))
    );
    assert_eq!(sent.header("x-amzn-sagemaker-custom-attributes"), Some("trace=abc"));
    assert_eq!(sent.header("x-amzn-sagemaker-target-model"), None);
    assert!(sent.header("authorization").is_some_and(|a| a.contains("/us-east-1/sagemaker/aws4_request")));

    // A pinned variant.
    let (status, answer) = predict(&client, &gw, "fraud-cloud-canary", &json!({"instances": [[1]]})).await;
    assert_eq!((status, answer["deployedModelId"].as_str()), (200, Some("canary")), "{answer}");
    assert_eq!(mock.requests().pop().unwrap().header("x-amzn-sagemaker-target-variant"), Some("canary"));

    // CSV in, CSV out: the endpoint's body and content type as they came.
    let (status, headers, bytes) = send(
        &client,
        &gw,
        "/v1/models/fraud-cloud:rawPredict",
        "text/csv",
        "1,2,3\n4,5,6\n",
        &[("accept", "text/csv")],
    )
    .await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&bytes));
    assert_eq!(headers["content-type"], "text/csv");
    assert_eq!(headers["x-weir-deployed-model"], "primary");
    let scores = format!("{}\n{}\n", sagemaker_score(&[1.0, 2.0, 3.0]), sagemaker_score(&[4.0, 5.0, 6.0]));
    assert_eq!(String::from_utf8_lossy(&bytes), scores);
    let sent = mock.requests().pop().unwrap();
    assert_eq!((&sent.body[..], sent.header("content-type")), (&b"1,2,3\n4,5,6\n"[..], Some("text/csv")));
    let counted = metric_eventually(
        &gw,
        "weir_predicted_instances_total",
        &[("model", "fraud-cloud"), ("target", "sm/fraud-endpoint")],
        4.0,
    )
    .await;
    assert_eq!(counted, 4.0, "2 JSON instances and 2 CSV lines");
}

#[tokio::test]
async fn prediction_errors_are_clear_and_failing_endpoints_fall_back() {
    let mock = sagemaker_mock().await;
    let gw = TestGateway::start(&config(&mock, "", "max_body_bytes = 4096", "")).await;
    let client = reqwest::Client::new();
    let error = |status: u16, body: &Value, code: &str| {
        let e = openai_error(body);
        assert_eq!((status, e["code"].as_str()), (status, Some(code)), "{body}");
        e["message"].as_str().unwrap().to_owned()
    };

    // The model rejected its input (a ModelError with a 4xx): the client's to fix, not retried.
    let before = mock.request_count();
    let (status, body) = predict(&client, &gw, "fraud-rescued", &json!({"instances": [["lots"]]})).await;
    assert_eq!(status, 400, "{body}");
    assert!(error(status, &body, "model_error").contains("not numbers"), "{body}");
    assert_eq!(mock.request_count(), before + 1, "a model's refusal is not retried elsewhere");

    for (model, body, want, code) in [
        ("fraud", json!({"instances": []}), 400, "invalid_value"),
        ("fraud", json!({"rows": [[1]]}), 400, "missing_required_parameter"),
        ("fraud", json!({"instances": [[1]], "parameters": 3}), 400, "invalid_value"),
        ("nope", json!({"instances": [[1]]}), 404, "model_not_found"),
        ("chat", json!({"instances": [[1]]}), 400, "unsupported_operation"),
        ("fraud", json!({"instances": [[1, 2]]}), 400, "invalid_value"),
    ] {
        let (status, answer) = predict(&client, &gw, model, &body).await;
        assert_eq!(status, want, "{model} {body}: {answer}");
        error(status, &answer, code);
    }
    let (status, answer) = predict(&client, &gw, "chat", &json!({"instances": [[1]]})).await;
    assert!(error(status, &answer, "unsupported_operation").contains("'chatty'"), "names the upstream: {answer}");

    // A chat request to a model that only predicts.
    let (status, _, bytes) = send(
        &client,
        &gw,
        "/v1/chat/completions",
        "application/json",
        json!({"model": "fraud-cloud", "messages": [{"role": "user", "content": "hi"}]}).to_string(),
        &[],
    )
    .await;
    error(status, &serde_json::from_slice(&bytes).unwrap(), "unsupported_operation");
    // Over the body limit.
    let big = json!({"instances": vec![[1.0; 6]; 200]}).to_string();
    let (status, _, bytes) = send(&client, &gw, "/v1/models/fraud:predict", "application/json", big, &[]).await;
    assert_eq!(status, 413, "{}", String::from_utf8_lossy(&bytes));

    // The endpoint's model crashes (a ModelError with a 5xx): the worker answers instead.
    mock.set_failing(Some(500));
    let (rows, want) = reference();
    let (status, answer) = predict(&client, &gw, "fraud-rescued", &json!({"instances": rows})).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["deployedModelId"], "fraud-mlp");
    assert_close(&floats(&answer["predictions"]), &want);
    // With nowhere else to go, the failure is the upstream's: a 502.
    let (status, answer) = predict(&client, &gw, "fraud-cloud", &json!({"instances": [[1]]})).await;
    assert_eq!(status, 502, "{answer}");
    error(status, &answer, "upstream_error");
}

/// The canary and ratelimit plugins on prediction traffic: `fraud` split 90/10 between the local
/// worker and the SageMaker endpoint, sticky per customer; 2 instances a minute at most for
/// `fraud-cloud-canary`.
fn policies(mock: &MockUpstream) -> String {
    // The latency judgement is not what this tests (a worker and a mock differ in latency, and a
    // loaded machine more): only the error rate can roll it back here.
    let split = "weight = 10\nguard = { window_seconds = 60, buckets = 6, min_requests = 20, \
                 max_error_rate_increase = 0.05, max_p95_latency_ratio = 1000.0 }";
    config(
        mock,
        r#"chain = ["canary", "ratelimit"]"#,
        "",
        &(canary(split)
            + r#"
[[plugins]]
name = "ratelimit"
source = "builtin:ratelimit"
on_error = "closed"
deadline = "2s"

[[plugins.config.limits]]
per = ["model"]
models = ["fraud-cloud-canary"]
instances_per_minute = 5
"#),
    )
}

/// The canary plugin, sticky by `x-customer-id`, splitting `fraud` between the worker (the
/// baseline) and the SageMaker endpoint with the split's `settings` (TOML lines).
fn canary(settings: &str) -> String {
    format!(
        r#"
[[plugins]]
name = "canary"
source = "builtin:canary"
on_error = "closed"
deadline = "2s"

[plugins.config]
sticky_header = "x-customer-id"

[[plugins.config.splits]]
model = "fraud"
baseline = "fraud"
canary = "sm/fraud-endpoint"
{settings}
"#
    )
}

#[tokio::test]
async fn a_canary_splits_predictions_between_a_worker_and_sagemaker_and_rolls_back() {
    let mock = sagemaker_mock().await;
    let gw = TestGateway::start(&policies(&mock)).await;
    let client = reqwest::Client::new();

    // 2,000 requests from 500 customers, four each: every customer stays on one side.
    let mut side: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut on_canary = 0;
    for i in 0..2000 {
        let customer = format!("customer-{}", i % 500);
        let (status, _, bytes) = send(
            &client,
            &gw,
            "/v1/models/fraud:predict",
            "application/json",
            json!({"instances": [[12.5, 14, 0.1, 3.0, 0, 0]]}).to_string(),
            &[("x-customer-id", &customer)],
        )
        .await;
        let answer: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        assert_eq!(status, 200, "{answer}");
        let deployed = answer["deployedModelId"].as_str().unwrap().to_owned();
        on_canary += usize::from(deployed == "primary");
        side.entry(customer).or_default().insert(deployed);
    }
    let share = on_canary as f64 / 2000.0;
    assert!((0.07..=0.13).contains(&share), "canary share {share}");
    assert!(side.values().all(|s| s.len() == 1), "every customer sees one variant");

    // The endpoint starts failing: the canary's customers get errors until the guard rolls it back,
    // then the worker answers everyone.
    mock.set_failing(Some(500));
    let canary_customers: Vec<&String> = side.iter().filter(|(_, s)| s.contains("primary")).map(|(c, _)| c).collect();
    let mut errors = 0;
    let mut rolled_back = false;
    for round in 0..200 {
        let customer = canary_customers[round % canary_customers.len()];
        let (status, _, bytes) = send(
            &client,
            &gw,
            "/v1/models/fraud:predict",
            "application/json",
            json!({"instances": [[1, 2, 3, 4, 0, 0]]}).to_string(),
            &[("x-customer-id", customer)],
        )
        .await;
        if status == 200 {
            let answer: Value = serde_json::from_slice(&bytes).unwrap();
            assert_eq!(answer["deployedModelId"], "fraud-mlp");
            rolled_back = true;
            break;
        }
        errors += 1;
    }
    assert!(rolled_back, "the canary was rolled back after {errors} errors");
    // ~200 canary successes are in the window: 11 errors put its error rate 5 points over the
    // baseline's 0 (a few more may land while the judgement runs).
    assert!((5..=60).contains(&errors), "rolled back once its error rate crossed the threshold: {errors}");
}

#[tokio::test]
async fn an_instance_limit_holds_exactly() {
    let mock = sagemaker_mock().await;
    let gw = TestGateway::start(&policies(&mock)).await;
    let client = reqwest::Client::new();
    // 5 instances a minute: 2 + 3 fit, the next single instance does not.
    for n in [2, 3] {
        let (status, body) = predict(&client, &gw, "fraud-cloud-canary", &json!({"instances": vec![[1]; n]})).await;
        assert_eq!(status, 200, "{body}");
    }
    let (status, _, bytes) = send(
        &client,
        &gw,
        "/v1/models/fraud-cloud-canary:predict",
        "application/json",
        json!({"instances": [[1]]}).to_string(),
        &[],
    )
    .await;
    let body: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(status, 429, "{body}");
    assert!(openai_error(&body)["message"].as_str().unwrap().contains("instances per minute"), "{body}");
    // A request over the whole limit says so.
    let (status, body) = predict(&client, &gw, "fraud-cloud-canary", &json!({"instances": vec![[1]; 6]})).await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(mock.request_count(), 2, "the refused requests never reached the endpoint");
}

#[tokio::test]
async fn predictions_are_priced_per_request_and_per_thousand_instances_in_the_ledger() {
    let mock = sagemaker_mock().await;
    let ledger = crate::support::state_dir().join(format!(
        "predict-cost-{}-{}.jsonl",
        std::process::id(),
        rand::random::<u32>()
    ));
    let _ = std::fs::remove_file(&ledger);
    let extra = format!(
        r#"
[state]
ledger = "{}"

[prices."sm/fraud-endpoint"]
per_request = 0.000002
per_1k_instances = 0.05

[[plugins]]
name = "cost"
source = "builtin:cost"
on_error = "closed"
deadline = "2s"

[plugins.config]
header = true
"#,
        ledger.display()
    );
    let gw = TestGateway::start(&config(&mock, r#"chain = ["cost"]"#, "", &extra)).await;
    let client = reqwest::Client::new();
    // $0.000002 + 3 × $0.00005 = $0.000152; 1,000 instances: $0.050002.
    let mut costs = Vec::new();
    for n in [3, 1000] {
        let (status, headers, bytes) = send(
            &client,
            &gw,
            "/v1/models/fraud-cloud:predict",
            "application/json",
            json!({"instances": vec![[1, 2]; n]}).to_string(),
            &[],
        )
        .await;
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&bytes));
        costs.push(headers["x-weir-cost-usd"].to_str().unwrap().to_owned());
    }
    assert_eq!(costs, ["0.000152", "0.050002"]);
    let mut entries = Vec::new();
    for _ in 0..100 {
        entries = weir::state::ledger::Ledger::read(&ledger).unwrap_or_default();
        if entries.len() == 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let recorded: Vec<(String, u32, u64)> =
        entries.iter().map(|e| (e.target.clone(), e.prompt_tokens, e.cost_pico_usd)).collect();
    assert_eq!(
        recorded,
        [("sm/fraud-endpoint".to_owned(), 0, 152_000_000), ("sm/fraud-endpoint".to_owned(), 0, 50_002_000_000)]
    );
}

#[tokio::test]
async fn shadow_predictions_reach_the_new_version_without_changing_the_answer() {
    let mock = sagemaker_mock().await;
    let extra = canary("weight = 100\nshadow = true");
    let gw = TestGateway::start(&config(&mock, r#"chain = ["canary"]"#, "", &extra)).await;
    let client = reqwest::Client::new();
    let (rows, want) = reference();
    for i in 0..20 {
        let customer = format!("c-{i}");
        let (status, _, bytes) = send(
            &client,
            &gw,
            "/v1/models/fraud:predict",
            "application/json",
            json!({"instances": rows}).to_string(),
            &[("x-customer-id", &customer)],
        )
        .await;
        let answer: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!((status, answer["deployedModelId"].as_str()), (200, Some("fraud-mlp")), "{answer}");
        assert_close(&floats(&answer["predictions"]), &want);
    }
    // Every copy has been sent once none is in flight (each counts before its client's answer).
    for _ in 0..200 {
        if crate::support::metric(&gw.metrics().await, "weir_in_flight_requests", &[]) == 0.0
            && mock.request_count() >= 20
        {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    assert_eq!(mock.request_count(), 20, "every prediction was mirrored to the endpoint");
    assert!(mock.requests().iter().all(|r| r.json() == json!({"instances": rows})), "the same payload");
}

#[tokio::test]
async fn deterministic_predictions_are_cached_by_their_payload() {
    let mock = sagemaker_mock().await;
    let extra = r#"
[[plugins]]
name = "cache"
source = "builtin:cache"
on_error = "open"
deadline = "2s"

[plugins.config]
predictions = true
"#;
    let gw = TestGateway::start(&config(&mock, r#"chain = ["cache"]"#, "", extra)).await;
    let client = reqwest::Client::new();
    let ask = |body: Value| {
        let client = client.clone();
        let url = gw.url("/v1/models/fraud-cloud:predict");
        async move {
            let response = client.post(url).json(&body).send().await.unwrap();
            let cache = response.headers().get("x-weir-cache").map(|v| v.to_str().unwrap().to_owned());
            (response.status().as_u16(), cache, response.json::<Value>().await.unwrap())
        }
    };
    let (status, cache, first) = ask(json!({"instances": [[1, 2], [3, 4]]})).await;
    assert_eq!((status, cache.as_deref()), (200, Some("miss")), "{first}");
    // The same payload with its keys in another order is the same digest.
    let mut hit = None;
    for _ in 0..50 {
        let (status, cache, again) = ask(json!({"instances": [[1, 2], [3, 4]]})).await;
        assert_eq!(status, 200);
        if cache.as_deref() == Some("hit") {
            hit = Some(again);
            break;
        }
        // The store lands just after the first answer.
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(hit.as_ref(), Some(&first), "a hit is the stored answer");
    let before = mock.request_count();
    let (_, cache, other) = ask(json!({"instances": [[1, 2], [3, 5]]})).await;
    assert_eq!(cache.as_deref(), Some("miss"), "another payload is another entry: {other}");
    assert_eq!(mock.request_count(), before + 1);
}

#[tokio::test]
async fn vertex_ai_and_azure_ml_endpoints_serve_predictions_with_their_own_auth() {
    let mock = MockUpstream::builder().api_key("aml-endpoint-key").start().await;
    let sa = crate::gemini::service_account(&mock);
    let base = format!("http://{}", mock.addr());
    let text = crate::support::bare_config(&format!(
        r#"
[[upstreams]]
name = "vertex"
kind = "vertex"
endpoint = "{base}"
project = "proj-1"
location = "us-central1"
credentials_file = "{sa}"

[[upstreams]]
name = "aml"
kind = "azureml"
endpoint = "{base}"
api_key = "aml-endpoint-key"

[[upstreams]]
name = "aml-entra"
kind = "azureml"
endpoint = "{base}"
tenant_id = "t"
client_id = "weir"
client_secret = "s"
token_endpoint = "{base}/t/oauth2/v2.0/token"

[[models]]
name = "fraud-vertex"
targets = [{{ upstream = "vertex", model = "4242" }}]

[[models]]
name = "fraud-aml"
targets = [{{ upstream = "aml", model = "green" }}]

[[models]]
name = "fraud-aml-entra"
targets = [{{ upstream = "aml-entra", model = "blue" }}]

[[models]]
name = "fraud-aml-missing"
targets = [{{ upstream = "aml", model = "purple" }}]
"#,
        sa = sa.display()
    ));
    let gw = TestGateway::start(&text).await;
    let client = reqwest::Client::new();
    let instances = json!({"instances": [[10, 20], [30, 40]]});
    let scores = json!([sagemaker_score(&[10.0, 20.0]), sagemaker_score(&[30.0, 40.0])]);

    // Vertex: OAuth from the service account, its own fields kept, `model` the public name.
    let (status, answer) = predict(&client, &gw, "fraud-vertex", &instances).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["predictions"], scores);
    assert_eq!((answer["deployedModelId"].as_str(), answer["model"].as_str()), (Some("424201"), Some("fraud-vertex")));
    assert_eq!(answer["modelVersionId"], "1", "the platform's other fields pass on");
    let sent = mock.requests().pop().unwrap();
    assert_eq!(sent.path, "/v1/projects/proj-1/locations/us-central1/endpoints/4242:predict");
    assert_eq!(sent.json(), instances);
    let (status, headers, bytes) = send(
        &client,
        &gw,
        "/v1/models/fraud-vertex:rawPredict",
        "application/json",
        json!([[10, 20]]).to_string(),
        &[],
    )
    .await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&bytes));
    assert_eq!(headers["x-weir-deployed-model"], "424201");
    assert_eq!(serde_json::from_slice::<Value>(&bytes).unwrap(), json!({"predictions": [scores[0]]}));

    // Azure ML: the endpoint key, the deployment pinned, MLflow's bare-array answer.
    for (model, deployment) in [("fraud-aml", "green"), ("fraud-aml-entra", "blue")] {
        let (status, answer) = predict(&client, &gw, model, &instances).await;
        assert_eq!(status, 200, "{model}: {answer}");
        assert_eq!(answer, json!({"predictions": scores, "model": model, "deployedModelId": deployment}));
        let sent = mock.requests().pop().unwrap();
        assert_eq!((sent.path.as_str(), sent.header("azureml-model-deployment")), ("/score", Some(deployment)));
    }
    assert!(mock.token_requests() >= 2, "Vertex and Entra tokens came from the token endpoints");
    // CSV in, JSON out, relayed as it came.
    let (status, headers, bytes) =
        send(&client, &gw, "/v1/models/fraud-aml:rawPredict", "text/csv", "10,20\n30,40\n", &[]).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&bytes));
    assert_eq!(
        (headers["content-type"].to_str().unwrap(), headers["x-weir-deployed-model"].to_str().unwrap()),
        ("application/json", "green")
    );
    assert_eq!(serde_json::from_slice::<Value>(&bytes).unwrap(), scores);
    let sent = mock.requests().pop().unwrap();
    assert_eq!((sent.header("content-type"), &sent.body[..]), (Some("text/csv"), &b"10,20\n30,40\n"[..]));
    // A deployment the endpoint does not have: its 404 and message.
    let (status, answer) = predict(&client, &gw, "fraud-aml-missing", &instances).await;
    assert_eq!(status, 404, "{answer}");
    assert!(openai_error(&answer)["message"].as_str().unwrap().contains("'purple' was not found"), "{answer}");
    // The scoring script fails: a 424 from Azure ML is the model's failure, a 502 here.
    let (status, answer) = predict(&client, &gw, "fraud-aml", &json!({"instances": [["x"]]})).await;
    assert_eq!(status, 502, "{answer}");
}

#[tokio::test]
async fn data_capture_writes_the_sampled_share_and_never_an_excluded_team() {
    let mock = sagemaker_mock().await;
    let dir = crate::support::state_dir().join(format!("capture-{}-{}", std::process::id(), rand::random::<u32>()));
    let path = dir.join("predictions.jsonl");
    let text = config(
        &mock,
        "",
        "",
        &format!(
            r#"
[capture]
path = "{}"
max_payload_bytes = "200B"
exclude_teams = ["health"]

[[keys]]
name = "fraud-team"
team = "risk"
key = "risk-key-0123456789abcdef"

[[keys]]
name = "clinic"
team = "health"
key = "health-key-0123456789abcdef"
"#,
            path.display()
        ),
    )
    .replace("name = \"fraud-cloud\"\n", "name = \"fraud-cloud\"\ncapture = 100\n")
    .replace("name = \"fraud\"\n", "name = \"fraud\"\ncapture = 25\n");
    let gw = TestGateway::start(&text).await;
    let client = reqwest::Client::new();
    let ask = |model: &'static str, key: &'static str, body: String| {
        let request = client
            .post(gw.url(&format!("/v1/models/{model}:predict")))
            .bearer_auth(key)
            .header("content-type", "application/json")
            .body(body);
        async move {
            let response = request.send().await.unwrap();
            assert_eq!(response.status(), 200);
        }
    };
    for _ in 0..3 {
        ask("fraud-cloud", "risk-key-0123456789abcdef", json!({"instances": [[1, 2]]}).to_string()).await;
        ask("fraud-cloud", "health-key-0123456789abcdef", json!({"instances": [[3, 4]]}).to_string()).await;
    }
    // Over the payload limit: recorded without the payloads.
    ask("fraud-cloud", "risk-key-0123456789abcdef", json!({"instances": vec![[1.5; 6]; 20]}).to_string()).await;
    for _ in 0..400 {
        ask("fraud", "risk-key-0123456789abcdef", json!({"instances": [[12.5, 14, 0.1, 3.0, 0, 0]]}).to_string()).await;
    }
    let expected_cloud = 4.0;
    let cloud = metric_eventually(
        &gw,
        "weir_captured_predictions_total",
        &[("model", "fraud-cloud"), ("outcome", "captured")],
        expected_cloud,
    )
    .await;
    assert_eq!(cloud, expected_cloud, "every one of the risk team's, none of health's");
    let mut records: Vec<Value> = Vec::new();
    for _ in 0..100 {
        records = std::fs::read_to_string(&path)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let captured =
            crate::support::metric(&gw.metrics().await, "weir_captured_predictions_total", &[("outcome", "captured")]);
        if records.len() as f64 == captured {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let cloud: Vec<&Value> = records.iter().filter(|r| r["model"] == "fraud-cloud").collect();
    assert_eq!(cloud.len(), 4);
    assert!(cloud.iter().all(|r| r["team"] == "risk"), "the excluded team is never captured");
    let first = cloud[0];
    assert_eq!(first["request"], json!({"instances": [[1, 2]]}));
    assert_eq!(first["response"]["predictions"], json!([sagemaker_score(&[1.0, 2.0])]));
    assert_eq!((first["target"].as_str(), first["deployed"].as_str()), (Some("sm/fraud-endpoint"), Some("primary")));
    assert_eq!(
        (first["instances"].as_u64(), first["status"].as_u64(), first["truncated"].as_bool()),
        (Some(1), Some(200), Some(false))
    );
    assert!(first["request_id"].as_str().is_some_and(|id| !id.is_empty()) && first["latency_ms"].is_u64());
    let big = cloud[3];
    assert_eq!((big["truncated"].as_bool(), big["request"]["bytes"].is_u64()), (Some(true), true), "{big}");
    // 25% of 400: within ±4.5 standard deviations (σ ≈ 8.7).
    let sampled = records.iter().filter(|r| r["model"] == "fraud").count();
    assert!((61..=139).contains(&sampled), "{sampled} of 400 captured at 25%");
    let _ = std::fs::remove_dir_all(&dir);
}
