//! Three `weir serve` processes sharing one real `redis-server` (`[state] backend = "redis"`):
//! a requests-per-minute and a tokens-per-minute limit hold across them; a budget holds under
//! concurrent load spread over all three; a response cached by one is served by another; canary
//! stickiness and rollback are the same everywhere; a circuit opened by one is skipped by all; and
//! stopping Redis mid-run degrades to per-replica state as configured and recovers when it
//! returns, with every ledger record in Redis's totals in the end; under `on_unavailable = "fail"`
//! each plugin's `on_error` decides; and the concurrency slots of a replica killed mid-request come
//! back after the hold TTL. The Responses API's stored responses are read, continued and deleted
//! through any replica, scoped to their team on every one; those stored while Redis is down stay
//! on their replica and are shared once it returns.
//!
//! Each assertion would fail with per-replica state: three replicas of a limit of 30 admit 90.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use weir::state::ledger::Ledger;
use weir_bench::mock::MockUpstream;

use crate::processes::{RedisServer, WeirProcess, free_port, temp_dir};
use crate::support::{metric, post_raw_as, sse_data, state_dir};

const ALICE: &str = "alice-key-0123456789abcdef";
const BOB: &str = "bob-key-0123456789abcdef";
const CAROL: &str = "carol-key-0123456789abcdef";

/// The mocks behind the replicas.
struct Mocks {
    /// Slow enough that no admitted request of a burst ends (and settles) while the burst arrives.
    slow: MockUpstream,
    fast: MockUpstream,
    /// The canary that fails every other request.
    failing: MockUpstream,
    /// The canary that always answers.
    healthy: MockUpstream,
    /// Fails its first three requests, then answers.
    flaky: MockUpstream,
}

impl Mocks {
    async fn start() -> Self {
        Self {
            slow: MockUpstream::builder().latency(Duration::from_millis(500)).start().await,
            fast: MockUpstream::builder().start().await,
            failing: MockUpstream::builder().fail_one_in(2, 500).start().await,
            healthy: MockUpstream::builder().start().await,
            flaky: MockUpstream::builder().fail_first(3, 500).start().await,
        }
    }
}

/// The config of one replica: its own port and ledger, the shared Redis, and every policy on its
/// own model (per-model chains), so the checks do not disturb each other.
fn replica_config(m: &Mocks, redis: &str, listen: SocketAddr, ledger: &Path, on_unavailable: &str) -> String {
    let cache = state_dir().join(".weir-cache");
    format!(
        r#"
chain = []

[server]
listen = "{listen}"

[log]
level = "warn"

[retry]
max_attempts = 3
backoff_base = "1ms"
backoff_max = "2ms"
# One attempt per target and request, so that each request through `flaky` is one failure that its
# circuit counts.
same_target = 0

[state]
backend = "redis"
ledger = "{ledger}"
plugin_cache = "{cache}"
responses = "{responses}"

[state.redis]
url = "{redis}"
key_prefix = "replicas-test:"
# Generous: the test machine is small and busy, and a slow answer would degrade on purpose.
timeout = "1s"
on_unavailable = "{on_unavailable}"

[[upstreams]]
name = "slow"
endpoint = "{slow}"

[[upstreams]]
name = "fast"
endpoint = "{fast}"

[[upstreams]]
name = "failing"
endpoint = "{failing}"

[[upstreams]]
name = "healthy"
endpoint = "{healthy}"

[[upstreams]]
name = "flaky"
endpoint = "{flaky}"

[[models]]
name = "limited"
targets = [{{ upstream = "slow", model = "x" }}]
plugins = ["ratelimit"]

[[models]]
name = "tokens"
targets = [{{ upstream = "slow", model = "x" }}]
plugins = ["ratelimit"]

[[models]]
name = "budget"
targets = [{{ upstream = "slow", model = "x" }}]
plugins = ["cost"]

[[models]]
name = "metered"
targets = [{{ upstream = "fast", model = "x" }}]
plugins = ["ratelimit", "cost"]

[[models]]
name = "cached"
targets = [{{ upstream = "fast", model = "x" }}]
plugins = ["cache"]

[[models]]
name = "sticky"
targets = [{{ upstream = "fast", model = "base" }}]
plugins = ["canary"]

[[models]]
name = "rollout"
targets = [{{ upstream = "fast", model = "base" }}]
plugins = ["canary"]

# The canaries' targets, known to the route table.
[[models]]
name = "sticky-next"
targets = [{{ upstream = "healthy", model = "canary" }}]

[[models]]
name = "rollout-next"
targets = [{{ upstream = "failing", model = "canary" }}]

[[models]]
name = "routed"
targets = [{{ upstream = "flaky", model = "x" }}, {{ upstream = "fast", model = "x" }}]
plugins = ["router"]

# The Responses API, translated to chat; no policy, so only the stored responses touch Redis.
[[models]]
name = "conversation"
targets = [{{ upstream = "fast", model = "x" }}]

[[keys]]
name = "alice"
team = "red"
key = "{ALICE}"

[[keys]]
name = "bob"
team = "blue"
key = "{BOB}"

[[keys]]
name = "carol"
team = "green"
key = "{CAROL}"

[prices."slow/x"]
input = 2.0
output = 8.0

[prices."fast/x"]
input = 2.0
output = 8.0

[[plugins]]
name = "ratelimit"
source = "builtin:ratelimit"
on_error = "closed"
deadline = "3s"
config = {{ limits = [
    {{ per = ["key"], models = ["limited"], requests_per_minute = 30 }},
    {{ per = ["team"], models = ["tokens"], tokens_per_minute = 200 }},
    {{ per = ["key"], models = ["metered"], requests_per_minute = 10 }},
] }}

[[plugins]]
name = "cost"
source = "builtin:cost"
on_error = "closed"
deadline = "3s"
config = {{ budgets = [{{ key = "carol", usd = 0.0005, period = "day" }}] }}

[[plugins]]
name = "cache"
source = "builtin:cache"
on_error = "closed"
deadline = "3s"
config = {{ ttl_seconds = 600 }}

[[plugins]]
name = "router"
source = "builtin:router"
on_error = "closed"
deadline = "3s"
config = {{ breaker = {{ failures = 3, cooldown_seconds = 600.0 }} }}

[[plugins]]
name = "canary"
source = "builtin:canary"
on_error = "closed"
deadline = "3s"
config = {{ splits = [
    {{ model = "sticky", baseline = "sticky", canary = "healthy/canary", weight = 50 }},
    {{ model = "rollout", baseline = "rollout", canary = "failing/canary", weight = 50, guard = {{ window_seconds = 600, buckets = 6, min_requests = 10 }} }},
] }}
"#,
        ledger = ledger.display(),
        // Each replica its own file: the spool of what Redis did not take.
        responses = ledger.with_extension("responses.jsonl").display(),
        cache = cache.display(),
        slow = m.slow.base_url(),
        fast = m.fast.base_url(),
        failing = m.failing.base_url(),
        healthy = m.healthy.base_url(),
        flaky = m.flaky.base_url(),
    )
}

/// Three replicas on one Redis.
struct Cluster {
    redis: RedisServer,
    replicas: Vec<WeirProcess>,
    ledgers: Vec<PathBuf>,
    _dir: PathBuf,
}

impl Cluster {
    async fn start(mocks: &Mocks, on_unavailable: &str) -> Self {
        let redis = RedisServer::start().await;
        let dir = temp_dir("replicas");
        let mut replicas = Vec::new();
        let mut ledgers = Vec::new();
        for n in 0..3 {
            let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
            let ledger = dir.join(format!("ledger-{n}.jsonl"));
            let config = replica_config(mocks, &redis.url(), addr, &ledger, on_unavailable);
            replicas.push(WeirProcess::start(&dir, &format!("replica-{n}"), addr, &config).await);
            ledgers.push(ledger);
        }
        for replica in &replicas {
            wait_ready(replica).await;
        }
        Self { redis, replicas, ledgers, _dir: dir }
    }

    /// Sends `n` requests at once, spread round-robin over the replicas.
    async fn burst(&self, n: usize, body: &str, key: &str) -> Vec<(u16, reqwest::header::HeaderMap, Value)> {
        let client = reqwest::Client::new();
        let tasks: Vec<_> = (0..n)
            .map(|i| {
                let url = self.replicas[i % 3].url("/v1/chat/completions");
                let (client, body, key) = (client.clone(), body.to_owned(), key.to_owned());
                tokio::spawn(async move { send(&client, &url, &body, &key).await })
            })
            .collect();
        let mut out = Vec::with_capacity(n);
        for task in tasks {
            out.push(task.await.expect("task"));
        }
        out
    }

    /// The sum of a metric over the three replicas.
    async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let mut sum = 0.0;
        for replica in &self.replicas {
            sum += metric(&replica.metrics().await, name, labels);
        }
        sum
    }
}

async fn wait_ready(replica: &WeirProcess) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = replica.ready().await;
        if status == 200 && body.contains("redis up") {
            return;
        }
        assert!(Instant::now() < deadline, "replica not ready with Redis up: {status} {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn send(client: &reqwest::Client, url: &str, body: &str, key: &str) -> (u16, reqwest::header::HeaderMap, Value) {
    let response = client
        .post(url)
        .bearer_auth(key)
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .expect("send");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let bytes = response.bytes().await.expect("body");
    (status, headers, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

fn chat(model: &str, extra: &str) -> String {
    format!(r#"{{"model":"{model}","messages":[{{"role":"user","content":"hello plugins"}}]{extra}}}"#)
}

/// Waits until the replicas ran `plugin`'s `on_complete` `n` times in all.
async fn completed(cluster: &Cluster, plugin: &str, n: usize) {
    let labels = [("plugin", plugin), ("hook", "on_complete")];
    for _ in 0..200 {
        if cluster.metric("weir_plugin_call_seconds_count", &labels).await >= n as f64 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{plugin} on_complete did not run {n} times");
}

async fn no_degradation(cluster: &Cluster) {
    assert_eq!(cluster.metric("weir_state_unavailable_total", &[]).await, 0.0, "no call fell back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_and_budgets_hold_across_three_replicas() {
    let mocks = Mocks::start().await;
    let cluster = Cluster::start(&mocks, "embedded").await;

    // Requests per minute: 90 at once, 30 through each replica, against one limit of 30.
    let started = Instant::now();
    let answers = cluster.burst(90, &chat("limited", ""), ALICE).await;
    let ok = answers.iter().filter(|(s, ..)| *s == 200).count();
    let bound = 30.0 + 30.0 * started.elapsed().as_secs_f64() / 60.0;
    eprintln!("rpm 30 across 3 replicas: {ok} of 90 admitted (bound {bound:.2})");
    assert!(ok >= 30 && ok as f64 <= bound.floor(), "{ok} admitted; bound {bound:.1}");
    assert!(answers.iter().any(|(s, ..)| *s == 429));

    // Tokens per minute: each request reserves 20 (4 estimated + max_tokens 16) of 200 per team.
    let started = Instant::now();
    let answers = cluster.burst(60, &chat("tokens", r#","max_tokens":16"#), BOB).await;
    let admitted: Vec<_> = answers.iter().filter(|(s, ..)| *s == 200).collect();
    let used: u64 = admitted.iter().map(|(_, _, b)| b["usage"]["total_tokens"].as_u64().expect("usage")).sum();
    let bound = 200.0 + 200.0 * started.elapsed().as_secs_f64() / 60.0;
    eprintln!("tpm 200 across 3 replicas: {} admitted, {used} tokens used (bound {bound:.2})", admitted.len());
    assert!(admitted.len() >= 10, "the bucket holds ten reservations: {} admitted", admitted.len());
    assert!(admitted.len() <= 10 + (bound - 200.0).ceil() as usize, "{} admitted", admitted.len());
    assert!(used as f64 <= bound, "{used} tokens; bound {bound:.1}");

    // A budget of $0.0005: a request reserves $0.000088 and costs $0.000028.
    let answers = cluster.burst(60, &chat("budget", r#","max_tokens":10"#), CAROL).await;
    let ok = answers.iter().filter(|(s, ..)| *s == 200).count();
    eprintln!("budget $0.0005 across 3 replicas, 60 concurrent: {ok} admitted");
    assert_eq!(ok, 5, "the budget holds five reservations in all, not five per replica");
    completed(&cluster, "cost", 60).await;
    // One at a time, over the replicas in turn, until the spending leaves no room.
    let mut served = ok;
    for i in 0..60 {
        let url = cluster.replicas[i % 3].url("/v1/chat/completions");
        let (status, _, body) =
            send(&reqwest::Client::new(), &url, &chat("budget", r#","max_tokens":10"#), CAROL).await;
        completed(&cluster, "cost", 61 + i).await;
        if status != 200 {
            assert_eq!(body["error"]["code"], "insufficient_quota", "{body}");
            break;
        }
        served += 1;
    }
    let records: Vec<_> = cluster.ledgers.iter().flat_map(|l| Ledger::read(l).unwrap_or_default()).collect();
    let spent: u64 = records.iter().map(|e| e.cost_pico_usd).sum();
    eprintln!("budget $0.0005 across 3 replicas: {served} served, ${} spent", spent as f64 / 1e12);
    assert_eq!(records.len(), served, "one ledger record per request served, over the three files");
    assert!(spent <= 500_000_000, "never over budget: {spent}");
    assert!(spent + 88_000_000 > 500_000_000, "refused only when one more could overspend: {spent}");
    assert!(cluster.ledgers.iter().filter(|l| l.exists()).count() >= 2, "the records are spread over replicas");
    no_degradation(&cluster).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caches_canaries_and_circuits_are_the_same_on_every_replica() {
    let mocks = Mocks::start().await;
    let cluster = Cluster::start(&mocks, "embedded").await;
    let client = reqwest::Client::new();
    let ask = |replica: usize, model: &str, user: &str| {
        let url = cluster.replicas[replica].url("/v1/chat/completions");
        // Deterministic (temperature 0), so the cache may keep the answer.
        let body = format!(
            r#"{{"model":"{model}","user":"{user}","temperature":0,"messages":[{{"role":"user","content":"hi"}}]}}"#
        );
        let client = client.clone();
        async move { send(&client, &url, &body, ALICE).await }
    };

    // Cached by replica 0, served by 1 and 2 without reaching the upstream.
    let (status, headers, first) = ask(0, "cached", "u").await;
    assert_eq!((status, headers["x-weir-cache"].to_str().unwrap()), (200, "miss"));
    let upstream = mocks.fast.request_count();
    for replica in [1, 2] {
        let (status, headers, body) = ask(replica, "cached", "u").await;
        assert_eq!((status, headers["x-weir-cache"].to_str().unwrap()), (200, "hit"), "replica {replica}");
        assert_eq!(body["choices"], first["choices"]);
    }
    assert_eq!(mocks.fast.request_count(), upstream, "hits did not reach the upstream");

    // Sticky: a user gets the same variant from every replica.
    for user in 0..20 {
        let mut variants = Vec::new();
        for replica in 0..3 {
            let (status, _, body) = ask(replica, "sticky", &format!("user-{user}")).await;
            assert_eq!(status, 200);
            variants.push(body["model"].as_str().expect("model").to_owned());
        }
        assert!(variants.iter().all(|v| *v == variants[0]), "user-{user}: {variants:?}");
    }

    // A failing canary, judged on the outcomes of all three replicas together, is rolled back for
    // all three at once.
    let mut sent = 0;
    while cluster.metric("weir_plugin_counter_total", &[("metric", "rollbacks"), ("model", "rollout")]).await < 1.0 {
        assert!(sent < 300, "no rollback after {sent} requests");
        ask(sent % 3, "rollout", &format!("rollout-{sent}")).await;
        sent += 1;
    }
    let canary = cluster
        .metric("weir_plugin_counter_total", &[("metric", "requests"), ("model", "rollout"), ("variant", "canary")])
        .await;
    assert_eq!(canary, 10.0, "judged once the window held ten canary requests from all replicas together");
    let before = mocks.failing.request_count();
    for n in 0..30 {
        let (status, _, body) = ask(n % 3, "rollout", &format!("after-{n}")).await;
        assert_eq!((status, body["model"].as_str()), (200, Some("base")));
    }
    assert_eq!(mocks.failing.request_count(), before, "no replica sends to the rolled-back canary");

    // Three failures through replica 0 open the circuit of `flaky`; 1 and 2 skip it too.
    for _ in 0..3 {
        let (status, ..) = ask(0, "routed", "r").await;
        assert_eq!(status, 200, "the fallback answers");
    }
    assert_eq!(mocks.flaky.request_count(), 3);
    for n in 0..6 {
        let (status, ..) = ask(1 + n % 2, "routed", "r").await;
        assert_eq!(status, 200);
    }
    assert_eq!(mocks.flaky.request_count(), 3, "the circuit opened by one replica is open on all");
    no_degradation(&cluster).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_redis_the_replicas_fall_back_to_their_own_state_and_recover_with_every_ledger_record() {
    let mocks = Mocks::start().await;
    let mut cluster = Cluster::start(&mocks, "embedded").await;
    let client = Arc::new(reqwest::Client::new());
    // `metered`: 10 requests a minute per key, and every answer priced onto the ledger.
    let body = chat("metered", r#","max_tokens":10"#);
    let round = |cluster: &Cluster, n: usize| {
        let client = client.clone();
        let urls: Vec<String> = (0..n).map(|i| cluster.replicas[i % 3].url("/v1/chat/completions")).collect();
        let body = body.clone();
        async move {
            let mut statuses = Vec::new();
            for url in urls {
                statuses.push(send(&client, &url, &body, BOB).await.0);
            }
            statuses
        }
    };
    let statuses = round(&cluster, 6).await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    let mut ok = statuses.len();

    // Redis goes away mid-run: requests keep being served from each replica's own state, and
    // /readyz says so (but stays ready: `ready_requires_redis` is off). The limit is per replica
    // meanwhile: 12 more are admitted (4 on each, each with its own 10), where the shared limit
    // had 4 left.
    cluster.redis.stop();
    let statuses = round(&cluster, 12).await;
    assert!(statuses.iter().all(|s| *s == 200), "served without Redis: {statuses:?}");
    ok += statuses.len();
    for replica in &cluster.replicas {
        let (status, text) = replica.ready().await;
        assert_eq!(status, 200, "{text}");
        assert!(text.contains("redis unavailable, serving this replica's embedded state"), "{text}");
    }
    assert!(cluster.metric("weir_state_redis_up", &[]).await == 0.0);
    let fallbacks = cluster.metric("weir_state_unavailable_total", &[("outcome", "embedded")]).await;
    assert!(fallbacks >= 12.0, "each reservation was served by the fallback: {fallbacks}");
    assert!(cluster.metric("weir_state_ledger_spooled_bytes", &[]).await > 0.0, "records wait on disk");

    // Redis comes back (empty: it had no persistence): the replicas notice by themselves, send
    // every record again, and carry on shared.
    cluster.redis.restart().await;
    for replica in &cluster.replicas {
        wait_ready(replica).await;
    }
    let statuses = round(&cluster, 6).await;
    assert!(statuses.iter().all(|s| *s == 200), "shared again, with a fresh limit: {statuses:?}");
    ok += statuses.len();
    let refused = round(&cluster, 6).await;
    assert_eq!(refused.iter().filter(|s| **s == 200).count(), 4, "the shared limit holds again: {refused:?}");
    ok += 4;
    assert_eq!(ok, 28);
    completed(&cluster, "cost", 30).await;

    let records: Vec<_> = cluster.ledgers.iter().flat_map(|l| Ledger::read(l).unwrap_or_default()).collect();
    assert_eq!(records.len(), 28, "one record per request served, none lost");
    let on_disk: u64 = records.iter().map(|e| e.cost_pico_usd).sum();
    let mut conn = cluster.redis.connection().await.expect("redis");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let days: Vec<(u64, u64)> = redis::cmd("HGETALL")
            .arg("replicas-test:{ledger}:spend:cost:k:bob")
            .query_async(&mut conn)
            .await
            .expect("totals");
        let in_redis: u64 = days.iter().map(|(_, c)| c).sum();
        if in_redis == on_disk {
            break;
        }
        assert!(Instant::now() < deadline, "Redis has {in_redis} of {on_disk} picodollars");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(cluster.metric("weir_state_redis_up", &[]).await, 3.0);
    let deadline = Instant::now() + Duration::from_secs(10);
    while cluster.metric("weir_state_ledger_spooled_bytes", &[]).await != 0.0 {
        assert!(Instant::now() < deadline, "the spool never emptied");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A Responses API request for `input`, continuing `previous` if given.
fn respond(input: &str, previous: Option<&str>, extra: &str) -> String {
    let previous = previous.map(|id| format!(r#","previous_response_id":"{id}""#)).unwrap_or_default();
    format!(r#"{{"model":"conversation","input":"{input}"{previous}{extra}}}"#)
}

/// A `GET` or `DELETE` of a stored response's path.
async fn call(client: &reqwest::Client, method: reqwest::Method, url: &str, key: &str) -> (u16, Value) {
    let response = client.request(method, url).bearer_auth(key).send().await.expect("send");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// The conversation the upstream received last, as `role: text` lines.
fn last_conversation(mock: &MockUpstream) -> Vec<String> {
    let requests = mock.requests();
    let sent = requests.iter().rev().find(|r| r.path.ends_with("/chat/completions")).expect("a chat request").json();
    let text = |content: &Value| match content {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts.iter().filter_map(|p| p["text"].as_str()).collect(),
        other => other.to_string(),
    };
    let messages = sent["messages"].as_array().expect("messages");
    messages.iter().map(|m| format!("{}: {}", m["role"].as_str().unwrap_or_default(), text(&m["content"]))).collect()
}

/// The id of a streamed Responses answer, from its last event.
fn streamed_id(body: &[u8]) -> String {
    let last: Value = serde_json::from_str(&sse_data(body).pop().expect("events")).expect("json");
    assert_eq!(last["type"], "response.completed", "{last}");
    last["response"]["id"].as_str().expect("id").to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_responses_are_read_continued_and_deleted_through_any_replica() {
    use reqwest::Method;
    let mocks = Mocks::start().await;
    let cluster = Cluster::start(&mocks, "embedded").await;
    let client = reqwest::Client::new();
    let url = |n: usize, path: &str| cluster.replicas[n].url(path);

    // Stored through replica 0, read through 1, its input listed through 2.
    let (status, _, first) =
        send(&client, &url(0, "/v1/responses"), &respond("Weather in Paris?", None, ""), ALICE).await;
    assert_eq!(status, 200, "{first}");
    let id = first["id"].as_str().expect("id").to_owned();
    let (status, fetched) = call(&client, Method::GET, &url(1, &format!("/v1/responses/{id}")), ALICE).await;
    assert_eq!((status, &fetched), (200, &first), "the same object through another replica");
    let (status, items) = call(&client, Method::GET, &url(2, &format!("/v1/responses/{id}/input_items")), ALICE).await;
    assert_eq!((status, items["data"][0]["content"][0]["text"].as_str()), (200, Some("Weather in Paris?")), "{items}");

    // Another team's key finds nothing on any replica, and reaches no upstream trying.
    let upstream = mocks.fast.request_count();
    for n in 0..3 {
        for path in [format!("/v1/responses/{id}"), format!("/v1/responses/{id}/input_items")] {
            assert_eq!(call(&client, Method::GET, &url(n, &path), BOB).await.0, 404, "replica {n}: {path}");
        }
        let (status, _) = call(&client, Method::DELETE, &url(n, &format!("/v1/responses/{id}")), BOB).await;
        assert_eq!(status, 404, "replica {n}: another team cannot delete it");
        let (status, _, error) = send(&client, &url(n, "/v1/responses"), &respond("and?", Some(&id), ""), BOB).await;
        assert_eq!((status, error["error"]["param"].as_str()), (404, Some("previous_response_id")), "{error}");
    }
    assert_eq!(mocks.fast.request_count(), upstream, "refused before any upstream is asked");

    // Continued through replica 2: the upstream gets the earlier turns, from Redis.
    let (status, _, second) =
        send(&client, &url(2, "/v1/responses"), &respond("And tomorrow?", Some(&id), ""), ALICE).await;
    assert_eq!((status, second["previous_response_id"].as_str()), (200, Some(id.as_str())), "{second}");
    let turns = ["user: Weather in Paris?", "assistant: echo: Weather in Paris?", "user: And tomorrow?"];
    assert_eq!(last_conversation(&mocks.fast), turns);

    // A streamed answer stored through replica 1 is continued through replica 0.
    let body = respond("Count to three", None, r#","stream":true"#);
    let (status, streamed) = post_raw_as(&url(1, "/v1/responses"), &body, Some(ALICE)).await;
    assert_eq!(status, 200);
    let streamed = streamed_id(&streamed);
    let (status, _, next) =
        send(&client, &url(0, "/v1/responses"), &respond("Again", Some(&streamed), ""), ALICE).await;
    assert_eq!(status, 200, "{next}");
    assert_eq!(
        last_conversation(&mocks.fast),
        ["user: Count to three", "assistant: echo: Count to three", "user: Again"]
    );

    // In Redis under the team's key, with `responses_ttl` (30 days by default) to live.
    let mut conn = cluster.redis.connection().await.expect("redis");
    let key = format!("replicas-test:responses:3:red:{}", second["id"].as_str().expect("id"));
    let ttl_ms: i64 = redis::cmd("PTTL").arg(&key).query_async(&mut conn).await.expect("pttl");
    let thirty_days = 30 * 86_400_000;
    assert!(ttl_ms > thirty_days - 600_000 && ttl_ms <= thirty_days, "{key}: {ttl_ms} ms");

    // Deleted through replica 1: gone on every replica.
    let (status, deleted) = call(&client, Method::DELETE, &url(1, &format!("/v1/responses/{id}")), ALICE).await;
    assert_eq!((status, deleted["deleted"].as_bool()), (200, Some(true)), "{deleted}");
    for n in 0..3 {
        let (status, _) = call(&client, Method::GET, &url(n, &format!("/v1/responses/{id}")), ALICE).await;
        assert_eq!(status, 404, "replica {n} after the delete");
    }
    let (status, _) = call(&client, Method::DELETE, &url(2, &format!("/v1/responses/{id}")), ALICE).await;
    assert_eq!(status, 404, "deleted once");
    let (status, _, _) = send(&client, &url(0, "/v1/responses"), &respond("more", Some(&id), ""), ALICE).await;
    assert_eq!(status, 404, "a deleted response cannot be continued");
    no_degradation(&cluster).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_stored_while_redis_is_down_stay_on_their_replica_and_are_shared_when_it_returns() {
    use reqwest::Method;
    let mocks = Mocks::start().await;
    let mut cluster = Cluster::start(&mocks, "embedded").await;
    let client = reqwest::Client::new();
    let url = |cluster: &Cluster, n: usize, path: &str| cluster.replicas[n].url(path);
    let (_, _, before) = send(&client, &url(&cluster, 0, "/v1/responses"), &respond("before", None, ""), ALICE).await;
    let before = before["id"].as_str().expect("id").to_owned();

    // Redis goes away. Answers are still stored, in the replica's own file; that replica reads
    // and continues them, the others (and the replica for what is in Redis) do not find them.
    cluster.redis.stop();
    let (status, _, during) =
        send(&client, &url(&cluster, 2, "/v1/responses"), &respond("during", None, ""), ALICE).await;
    assert_eq!(status, 200, "{during}");
    let during = during["id"].as_str().expect("id").to_owned();
    let (status, fetched) =
        call(&client, Method::GET, &url(&cluster, 2, &format!("/v1/responses/{during}")), ALICE).await;
    assert_eq!((status, fetched["id"].as_str()), (200, Some(during.as_str())), "{fetched}");
    let (status, _, next) =
        send(&client, &url(&cluster, 2, "/v1/responses"), &respond("still down", Some(&during), ""), ALICE).await;
    assert_eq!(status, 200, "{next}");
    assert_eq!(last_conversation(&mocks.fast), ["user: during", "assistant: echo: during", "user: still down"]);
    let next = next["id"].as_str().expect("id").to_owned();
    for (n, id) in [(0, &during), (1, &next), (2, &before)] {
        let (status, _) = call(&client, Method::GET, &url(&cluster, n, &format!("/v1/responses/{id}")), ALICE).await;
        assert_eq!(status, 404, "replica {n} serves its own state only while Redis is down: {id}");
    }
    let (status, _) = call(&client, Method::GET, &url(&cluster, 2, &format!("/v1/responses/{during}")), BOB).await;
    assert_eq!(status, 404, "still scoped to the team");
    let replica = cluster.replicas[2].metrics().await;
    let spooled = metric(&replica, "weir_state_unavailable_total", &[("op", "responses.put"), ("outcome", "spooled")]);
    assert_eq!(spooled, 2.0, "both answers were kept on disk");

    // Redis returns (empty: no persistence in this test): replica 2 carries what it kept into it,
    // and every replica reads, continues and deletes it.
    cluster.redis.restart().await;
    for replica in &cluster.replicas {
        wait_ready(replica).await;
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    for id in [&during, &next] {
        loop {
            let (status, _) =
                call(&client, Method::GET, &url(&cluster, 0, &format!("/v1/responses/{id}")), ALICE).await;
            if status == 200 {
                break;
            }
            assert!(Instant::now() < deadline, "{id} never reached Redis: {status}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let (status, _, after) =
        send(&client, &url(&cluster, 1, "/v1/responses"), &respond("back", Some(&next), ""), ALICE).await;
    assert_eq!(status, 200, "{after}");
    let turns =
        ["user: during", "assistant: echo: during", "user: still down", "assistant: echo: still down", "user: back"];
    assert_eq!(last_conversation(&mocks.fast), turns);
    let (status, _) = call(&client, Method::DELETE, &url(&cluster, 0, &format!("/v1/responses/{during}")), ALICE).await;
    assert_eq!(status, 200);
    let (status, _) = call(&client, Method::GET, &url(&cluster, 2, &format!("/v1/responses/{during}")), ALICE).await;
    assert_eq!(status, 404, "deleted through another replica, so gone from the replica that kept it too");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_fail_each_plugins_on_error_decides_and_readiness_can_require_redis() {
    let mut redis = RedisServer::start().await;
    let mock = MockUpstream::builder().start().await;
    let limits = r#"{ limits = [{ per = ["key"], requests_per_minute = 1000 }] }"#;
    let text = format!(
        r#"
chain = []

[server]
listen = "127.0.0.1:0"

[state]
backend = "redis"
responses = "{responses}"

[state.redis]
url = "{redis}"
key_prefix = "fail-test:"
timeout = "1s"
on_unavailable = "fail"
ready_requires_redis = true

[[upstreams]]
name = "mock"
endpoint = "{mock}"

[[models]]
name = "strict"
targets = [{{ upstream = "mock", model = "x" }}]
plugins = ["strict-limits"]

[[models]]
name = "lenient"
targets = [{{ upstream = "mock", model = "x" }}]
plugins = ["lenient-limits"]

[[models]]
name = "conversation"
targets = [{{ upstream = "mock", model = "x" }}]

[[keys]]
name = "alice"
team = "red"
key = "{ALICE}"

[[plugins]]
name = "strict-limits"
source = "builtin:ratelimit"
on_error = "closed"
deadline = "3s"
config = {limits}

[[plugins]]
name = "lenient-limits"
source = "builtin:ratelimit"
on_error = "open"
deadline = "3s"
config = {limits}
"#,
        redis = redis.url(),
        mock = mock.base_url(),
        responses = temp_dir("fail-responses").join("responses.jsonl").display(),
    );
    let gw = crate::support::TestGateway::start(&text).await;
    let client = reqwest::Client::new();
    let url = gw.url("/v1/chat/completions");
    let ready = || async { reqwest::get(gw.url("/readyz")).await.expect("readyz").status().as_u16() };
    let deadline = Instant::now() + Duration::from_secs(20);
    while ready().await != 200 {
        assert!(Instant::now() < deadline, "never ready with Redis up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for model in ["strict", "lenient"] {
        assert_eq!(send(&client, &url, &chat(model, ""), ALICE).await.0, 200, "{model} with Redis up");
    }
    let responses = gw.url("/v1/responses");
    let (status, _, stored) = send(&client, &responses, &respond("kept in Redis", None, ""), ALICE).await;
    assert_eq!(status, 200, "{stored}");
    let stored = gw.url(&format!("/v1/responses/{}", stored["id"].as_str().expect("id")));

    redis.stop();
    let (status, _, body) = send(&client, &url, &chat("strict", ""), ALICE).await;
    assert_eq!(status, 500, "a closed plugin whose state is unavailable fails the request: {body}");
    assert_eq!(body["error"]["code"], "plugin_error", "{body}");
    let (status, ..) = send(&client, &url, &chat("lenient", ""), ALICE).await;
    assert_eq!(status, 200, "an open one lets it through without its limit");
    assert_eq!(ready().await, 503, "ready_requires_redis takes the replica out of the load balancer");
    // A stored response Redis has cannot be read now: not a 404 (it exists), a 503 to retry.
    let (status, error) = call(&client, reqwest::Method::GET, &stored, ALICE).await;
    assert_eq!((status, error["error"]["code"].as_str()), (503, Some("state_unavailable")), "{error}");
    let (status, _) = call(&client, reqwest::Method::DELETE, &stored, ALICE).await;
    assert_eq!(status, 503, "nor deleted");
    // An answer stored meanwhile is kept on this replica's disk, read from there, and sent to
    // Redis when it returns.
    let (status, _, during) = send(&client, &responses, &respond("kept on disk", None, ""), ALICE).await;
    assert_eq!(status, 200, "answers need no Redis: {during}");
    let during_id = during["id"].as_str().expect("id").to_owned();
    let during = gw.url(&format!("/v1/responses/{during_id}"));
    assert_eq!(call(&client, reqwest::Method::GET, &during, ALICE).await.0, 200, "read from this replica's spool");
    let metrics = gw.metrics().await;
    assert!(metric(&metrics, "weir_plugin_faults_total", &[("kind", "state_unavailable")]) >= 2.0, "{metrics}");
    assert!(metric(&metrics, "weir_state_unavailable_total", &[("outcome", "failed")]) >= 2.0, "{metrics}");

    redis.restart().await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while ready().await != 200 {
        assert!(Instant::now() < deadline, "did not recover when Redis came back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(send(&client, &url, &chat("strict", ""), ALICE).await.0, 200, "recovered by itself");
    let mut conn = redis.connection().await.expect("redis");
    let key = format!("fail-test:responses:3:red:{during_id}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !redis::cmd("EXISTS").arg(&key).query_async::<bool>(&mut conn).await.expect("exists") {
        assert!(Instant::now() < deadline, "the kept response never reached Redis");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(call(&client, reqwest::Method::GET, &during, ALICE).await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_slots_of_a_replica_killed_mid_request_come_back_after_the_hold_ttl() {
    let redis = RedisServer::start().await;
    let slow = MockUpstream::builder().latency(Duration::from_secs(3)).start().await;
    let dir = temp_dir("holds");
    let cache = state_dir().join(".weir-cache");
    let config = |addr: SocketAddr, n: usize| {
        format!(
            r#"
[server]
listen = "{addr}"

[log]
level = "warn"

[timeouts]
total = "5s"

[state]
backend = "redis"
ledger = "{ledger}"
plugin_cache = "{cache}"

[state.redis]
url = "{redis}"
key_prefix = "holds-test:"
timeout = "1s"
hold_ttl = "5s"

[[upstreams]]
name = "slow"
endpoint = "{slow}"

[[models]]
name = "m"
targets = [{{ upstream = "slow", model = "x" }}]

[[keys]]
name = "alice"
team = "red"
key = "{ALICE}"

[[plugins]]
name = "ratelimit"
source = "builtin:ratelimit"
on_error = "closed"
deadline = "3s"
config = {{ limits = [{{ per = ["key"], concurrent = 2 }}] }}
"#,
            ledger = dir.join(format!("ledger-{n}.jsonl")).display(),
            cache = cache.display(),
            redis = redis.url(),
            slow = slow.base_url(),
        )
    };
    let mut replicas = Vec::new();
    for n in 0..2 {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        replicas.push(WeirProcess::start(&dir, &format!("replica-{n}"), addr, &config(addr, n)).await);
    }
    for replica in &replicas {
        wait_ready(replica).await;
    }
    let client = reqwest::Client::new();
    let body = chat("m", "");

    // Replica 0 takes both slots and dies with the requests in flight: it never settles them.
    let sent = Instant::now();
    let in_flight: Vec<_> = (0..2)
        .map(|_| {
            let (client, url, body) = (client.clone(), replicas[0].url("/v1/chat/completions"), body.clone());
            tokio::spawn(async move { client.post(url).bearer_auth(ALICE).body(body).send().await.map(|r| r.status()) })
        })
        .collect();
    while slow.request_count() < 2 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let killed = Instant::now();
    replicas[0].kill9();
    for request in in_flight {
        assert!(request.await.expect("task").is_err(), "the killed replica answered");
    }

    // Replica 1 sees the slots taken (the limit is shared)…
    let url = replicas[1].url("/v1/chat/completions");
    let (status, _, body_) = send(&client, &url, &body, ALICE).await;
    assert_eq!(status, 429, "both slots are still held: {body_}");
    // … until the hold TTL gives them back, with no replica left to settle them.
    let mut status = 429;
    while status == 429 {
        assert!(killed.elapsed() < Duration::from_secs(30), "the slots never came back");
        tokio::time::sleep(Duration::from_millis(250)).await;
        status = send(&client, &url, &body, ALICE).await.0;
    }
    assert_eq!(status, 200);
    // The holds were taken after `sent`, so they cannot have expired before `sent` + 5 s.
    assert!(sent.elapsed() >= Duration::from_secs(5), "given back before the hold TTL: {:?}", sent.elapsed());
}
