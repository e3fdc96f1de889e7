//! Policy plugins through the real gateway: hostile plugins are contained (deadline, memory cap,
//! traps, oversized answers, bad routes) with their configured open/closed outcome and a metric while
//! other routes keep flowing; decisions work; a hot swap under load loses nothing and mixes nothing;
//! the SDK's example plugin runs every hook and host import end to end.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use weir_bench::mock::MockUpstream;

use crate::support::{TestGateway, metric, metric_eventually, openai_error, post, state_dir};

const CHAT: &str = r#"{"model":"MODEL","messages":[{"role":"user","content":"hello plugins"}]}"#;

fn chat_body(model: &str) -> String {
    CHAT.replace("MODEL", model)
}

/// A config with one mock upstream, `clean` (no plugins) and one model per `(name, plugin)` pair,
/// each with its own one-plugin chain; `plugins` holds the `[[plugins]]` tables.
fn config(mock: &MockUpstream, models: &[(&str, &str)], plugins: &str, extra: &str) -> String {
    let mut text = format!(
        r#"
chain = []
{extra}

[server]
listen = "127.0.0.1:0"

[[upstreams]]
name = "mock"
endpoint = "{}"

[[models]]
name = "clean"
targets = [{{ upstream = "mock", model = "mock-model" }}]
"#,
        mock.base_url()
    );
    for (model, plugin) in models {
        text.push_str(&format!(
            "\n[[models]]\nname = \"{model}\"\ntargets = [{{ upstream = \"mock\", model = \"mock-model\" }}]\nplugins = [\"{plugin}\"]\n"
        ));
    }
    text.push_str(plugins);
    text
}

/// A `[[plugins]]` table. Unless `settings` sets one, the deadline is generous: these tests share
/// two cores with the rest of the suite, and only the hostile-plugin test is about deadlines.
fn plugin(name: &str, path: &str, settings: &str) -> String {
    let deadline = if settings.contains("deadline") { "" } else { "deadline = \"2s\"\n" };
    format!("\n[[plugins]]\nname = \"{name}\"\nsource = \"{path}\"\n{deadline}{settings}\n")
}

/// The status of a chat request carrying the header `name: 1`.
async fn chat_with_header(gw: &TestGateway, model: &str, name: &str) -> u16 {
    let url = format!("{}/chat/completions", gw.base_url());
    let response =
        reqwest::Client::new().post(url).header(name, "1").body(chat_body(model)).send().await.expect("send");
    response.status().as_u16()
}

async fn chat(gw: &TestGateway, model: &str) -> (u16, reqwest::header::HeaderMap, Value) {
    post(&format!("{}/chat/completions", gw.base_url()), &chat_body(model), None).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_plugins_are_contained_and_other_routes_keep_flowing() {
    use weir_test_plugins as p;
    let upstream = MockUpstream::builder().start().await;
    let plugins = [
        plugin("loop-open", p::LOOP, "on_error = \"open\"\ndeadline = \"20ms\""),
        plugin("loop-closed", p::LOOP, "on_error = \"closed\"\ndeadline = \"20ms\""),
        plugin("bomb", p::MEMORY_BOMB, "on_error = \"open\"\nmemory = \"4MiB\""),
        plugin("trap", p::TRAP, "on_error = \"closed\""),
        // Copying 16 MiB out of the guest is slow in a debug build on a loaded machine: a generous deadline.
        plugin("giant", p::GIANT_RESPONSE, "on_error = \"open\"\nmemory = \"160MiB\"\ndeadline = \"10s\""),
        plugin("hammer", p::IMPORT_HAMMER, "on_error = \"open\"\ndeadline = \"30ms\""),
        plugin("bad-route", p::BAD_ROUTE, "on_error = \"closed\""),
    ]
    .concat();
    let models = [
        ("m-loop-open", "loop-open"),
        ("m-loop-closed", "loop-closed"),
        ("m-bomb", "bomb"),
        ("m-trap", "trap"),
        ("m-giant", "giant"),
        ("m-hammer", "hammer"),
        ("m-bad-route", "bad-route"),
    ];
    let gw = Arc::new(TestGateway::start(&config(&upstream, &models, &plugins, "")).await);

    // Clean traffic runs alongside the whole time and must never notice.
    let background = {
        let gw = gw.clone();
        tokio::spawn(async move {
            let mut statuses = HashMap::new();
            for _ in 0..200 {
                let (status, _, _) = chat(&gw, "clean").await;
                *statuses.entry(status).or_insert(0) += 1;
            }
            statuses
        })
    };

    let cases: &[(&str, &str, u16, &str)] = &[
        ("m-loop-open", "loop-open", 200, "deadline"),
        ("m-loop-closed", "loop-closed", 500, "deadline"),
        ("m-bomb", "bomb", 200, "memory"),
        ("m-trap", "trap", 500, "trap"),
        ("m-giant", "giant", 200, "bad_decision"),
        ("m-hammer", "hammer", 200, "deadline"),
        ("m-bad-route", "bad-route", 500, "bad_decision"),
    ];
    for round in 1..=2 {
        for (model, plugin, status, kind) in cases {
            let (got, _, body) = chat(&gw, model).await;
            assert_eq!(got, *status, "{model}: {body}");
            if *status == 500 {
                let error = openai_error(&body);
                assert_eq!(error["code"], "plugin_error", "{body}");
                assert!(error["message"].as_str().is_some_and(|m| m.contains(plugin)), "names the plugin: {body}");
            } else {
                assert_eq!(
                    body["choices"][0]["message"]["content"], "echo: hello plugins",
                    "{model}: fail-open continues"
                );
            }
            let faults = metric(&gw.metrics().await, "weir_plugin_faults_total", &[("plugin", plugin), ("kind", kind)]);
            assert_eq!(faults, f64::from(round), "{plugin}: one {kind} fault per request");
        }
    }
    let statuses = background.await.expect("background traffic");
    assert_eq!(statuses, HashMap::from([(200, 200)]), "clean traffic was affected");
}

#[tokio::test]
async fn a_plugin_decision_is_not_a_fault() {
    let upstream = MockUpstream::builder().start().await;
    let plugins = plugin("gate", weir_test_plugins::REJECT_HEADER, "on_error = \"closed\"");
    let gw = TestGateway::start(&config(&upstream, &[("guarded", "gate")], &plugins, "")).await;
    let url = format!("{}/chat/completions", gw.base_url());

    // The fixture rejects with a 500 if it can read `x-undeclared`, a header it did not declare.
    let response = reqwest::Client::new()
        .post(&url)
        .header("x-undeclared", "1")
        .body(chat_body("guarded"))
        .send()
        .await
        .expect("send");
    assert_eq!(response.status().as_u16(), 200, "undeclared headers are invisible to plugins");
    let response =
        reqwest::Client::new().post(&url).header("x-block", "1").body(chat_body("guarded")).send().await.expect("send");
    assert_eq!(response.status().as_u16(), 403);
    let body: Value = response.json().await.expect("json");
    let error = openai_error(&body);
    assert_eq!((error["code"].as_str(), error["type"].as_str()), (Some("blocked"), Some("permission_error")));
    assert_eq!(upstream.request_count(), 1, "the rejected request never reached the upstream");
    let metrics = gw.metrics().await;
    assert_eq!(metric(&metrics, "weir_plugin_faults_total", &[]), 0.0, "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hot_swap_under_load_loses_no_request_and_mixes_no_versions() {
    let upstream = MockUpstream::builder().latency(Duration::from_millis(5)).start().await;
    let tagged = |version: &str| {
        let plugins = plugin(
            "tag",
            weir_test_plugins::HEADER_TAG,
            &format!("on_error = \"closed\"\nconfig = {{ version = \"{version}\" }}"),
        );
        config(&upstream, &[("tagged", "tag")], &plugins, "")
    };
    let gw = Arc::new(TestGateway::start(&tagged("v1")).await);

    let mut clients = Vec::new();
    for _ in 0..8 {
        let gw = gw.clone();
        clients.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            for _ in 0..40 {
                let (status, headers, body) = chat(&gw, "tagged").await;
                assert_eq!(status, 200, "{body}");
                let versions: Vec<&str> =
                    headers.get_all("x-plugin-version").iter().map(|v| v.to_str().expect("ascii")).collect();
                assert_eq!(versions.len(), 1, "exactly one version per response: {versions:?}");
                seen.push(versions[0].to_owned());
            }
            seen
        }));
    }
    tokio::time::sleep(Duration::from_millis(150)).await;
    let new_config =
        weir_config::load_str(&tagged("v2"), &weir_config::MapEnv::default(), &state_dir()).expect("config");
    gw.gateway.reload_with(new_config).await.expect("reload");

    let mut counts: HashMap<String, usize> = HashMap::new();
    for client in clients {
        let seen = client.await.expect("client");
        let last = seen.last().cloned();
        assert_eq!(last.as_deref(), Some("v2"), "every client ends on the new version");
        for v in seen {
            *counts.entry(v).or_default() += 1;
        }
    }
    assert_eq!(counts.values().sum::<usize>(), 320, "no request lost");
    assert!(counts.get("v1").is_some_and(|n| *n > 0) && counts.get("v2").is_some_and(|n| *n > 0), "{counts:?}");
    // on-complete saw the same version as on-request, request by request.
    for (version, n) in &counts {
        let labels = [("plugin", "tag"), ("metric", "completed"), ("version", version.as_str())];
        let completed = metric_eventually(&gw, "weir_plugin_counter_total", &labels, *n as f64).await;
        assert_eq!(completed, *n as f64, "{version}: on-complete saw another version");
    }
    let missing = metric(&gw.metrics().await, "weir_plugin_counter_total", &[("version", "missing")]);
    assert_eq!(missing, 0.0, "the per-request value set in on-request was there in on-complete");
}

#[tokio::test]
async fn an_invalid_reload_keeps_the_old_configuration_serving() {
    let upstream = MockUpstream::builder().start().await;
    let dir = std::env::temp_dir().join(format!("weir-reload-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("weir.toml");
    let good = config(&upstream, &[("guarded", "gate")], &plugin("gate", weir_test_plugins::REJECT_HEADER, ""), "");
    std::fs::write(&file, &good).expect("write");
    let loaded = weir_config::load_file(&file, &weir_config::MapEnv::default()).expect("config");
    let gw = TestGateway::start_with(loaded).await;

    std::fs::write(&file, good.replace(weir_test_plugins::REJECT_HEADER, "/nonexistent/plugin.wasm")).expect("write");
    let (status, _, body) = post(&gw.url("/admin/reload"), "", None).await;
    assert_eq!(status, 400, "{body}");
    assert!(openai_error(&body)["message"].as_str().is_some_and(|m| m.contains("/nonexistent/plugin.wasm")), "{body}");
    assert_eq!(chat_with_header(&gw, "guarded", "x-block").await, 403, "the old plugin still serves");

    // A valid change is picked up by the same call.
    std::fs::write(&file, good.replace("plugins = [\"gate\"]", "plugins = []")).expect("write");
    let (status, _, body) = post(&gw.url("/admin/reload"), "", None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(chat_with_header(&gw, "guarded", "x-block").await, 200, "the new configuration serves");
}

#[tokio::test]
async fn fresh_instances_per_request_work_and_stay_isolated() {
    let upstream = MockUpstream::builder().start().await;
    let plugins = plugin("fresh", weir_test_plugins::NOOP, "instances = \"fresh\"");
    let gw = TestGateway::start(&config(&upstream, &[("m", "fresh")], &plugins, "")).await;
    for _ in 0..5 {
        let (status, _, body) = chat(&gw, "m").await;
        assert_eq!(status, 200, "{body}");
    }
    let calls = metric_eventually(&gw, "weir_plugin_call_seconds_count", &[("plugin", "fresh")], 15.0).await;
    assert_eq!(calls, 15.0, "three hooks × five requests");
}

#[tokio::test]
async fn the_example_plugin_runs_every_hook_and_import_end_to_end() {
    let upstream = MockUpstream::builder().start().await;
    let dir = std::env::temp_dir().join(format!("weir-example-{}-{}", std::process::id(), rand_suffix()));
    std::fs::create_dir_all(&dir).expect("dir");
    let ledger = dir.join("ledger.jsonl");
    let plugins = plugin(
        "hello",
        weir_test_plugins::HELLO_POLICY,
        "on_error = \"closed\"\nconfig = { blocked_users = [\"mallory\"], requests_per_minute = 3 }",
    );
    let extra = format!(
        "[state]\nledger = \"{}\"\n\n[prices.\"mock/mock-model\"]\ninput = 2.0\noutput = 8.0\n",
        ledger.display()
    );
    let gw = TestGateway::start(&config(&upstream, &[("hello-model", "hello")], &plugins, &extra)).await;
    let url = format!("{}/chat/completions", gw.base_url());

    let mut usages = Vec::new();
    for _ in 0..3 {
        let (status, headers, body) = post(&url, &chat_body("hello-model"), None).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(headers.get("x-hello-policy").map(|v| v.to_str().expect("ascii")), Some("seen"));
        usages.push(body["usage"].clone());
    }
    let (status, headers, body) = post(&url, &chat_body("hello-model"), None).await;
    assert_eq!(status, 429, "the fourth request in a minute is over the plugin's quota: {body}");
    assert!(headers.contains_key("retry-after"), "{headers:?}");

    let blocked = r#"{"model":"hello-model","user":"mallory","messages":[{"role":"user","content":"x"}]}"#;
    let (status, _, body) = post(&url, blocked, None).await;
    assert_eq!(status, 403, "{body}");

    metric_eventually(&gw, "weir_plugin_call_seconds_count", &[("plugin", "hello"), ("hook", "on_complete")], 5.0)
        .await;
    let entries = weir::state::ledger::Ledger::read(&ledger).expect("ledger");
    assert_eq!(entries.len(), 3, "one ledger record per served request: {entries:?}");
    for (entry, usage) in entries.iter().zip(&usages) {
        let (input, output) =
            (usage["prompt_tokens"].as_u64().expect("n"), usage["completion_tokens"].as_u64().expect("n"));
        assert_eq!((u64::from(entry.prompt_tokens), u64::from(entry.completion_tokens)), (input, output));
        assert_eq!(entry.cost_pico_usd, input * 2_000_000 + output * 8_000_000, "price × usage, in picodollars");
        assert_eq!(
            (entry.model.as_str(), entry.target.as_str(), entry.plugin.as_str()),
            ("hello-model", "mock/mock-model", "hello")
        );
    }
    let metrics = gw.metrics().await;
    assert!(
        metric(&metrics, "weir_plugin_counter_total", &[("plugin", "hello"), ("metric", "requests")]) >= 3.0,
        "{metrics}"
    );
    assert_eq!(metric(&metrics, "weir_plugin_faults_total", &[]), 0.0, "{metrics}");
}

/// Why a gateway with this config (valid as a file) does not start.
async fn load_error(text: &str) -> String {
    let loaded = weir_config::load_str(text, &weir_config::MapEnv::default(), &state_dir()).expect("config");
    weir::Gateway::new(loaded, Box::new(weir_config::MapEnv::default())).await.expect_err("must not load").to_string()
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

/// What the README tells a plugin author to do: `weir plugin new`, `cargo build --release`, point
/// the config at the component. The scaffold must build as generated and behave as its comments say,
/// against the SDK as it would be published: the crate `cargo package` makes, unpacked outside
/// Weir's tree, so that nothing of the workspace can stand in for what the crate lacks.
#[tokio::test]
async fn a_scaffolded_plugin_builds_and_loads_as_the_readme_says() {
    let work = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/scaffold-test");
    let dir = work.join(format!("my-policy-{}", rand_suffix()));
    std::fs::create_dir_all(&work).expect("work dir");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let packaged = work.join(format!("sdk-package-{}", rand_suffix()));
    let package = tokio::process::Command::new(&cargo)
        .args(["package", "-p", "weir-sdk", "--no-verify", "--allow-dirty", "--offline", "--quiet"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("CARGO_TARGET_DIR", &packaged)
        .output()
        .await
        .expect("cargo runs");
    assert!(package.status.success(), "cargo package -p weir-sdk:\n{}", String::from_utf8_lossy(&package.stderr));
    let version = weir::plugins::scaffold::SDK_VERSION;
    let unpack = std::process::Command::new("tar")
        .arg("xzf")
        .arg(packaged.join(format!("package/weir-sdk-{version}.crate")))
        .arg("-C")
        .arg(&packaged)
        .output()
        .expect("tar runs");
    assert!(unpack.status.success(), "{}", String::from_utf8_lossy(&unpack.stderr));
    let sdk = packaged.join(format!("weir-sdk-{version}"));
    weir::plugins::scaffold::scaffold(&dir, "my-policy", Some(&sdk)).expect("scaffold");

    let build = tokio::process::Command::new(cargo)
        .args(["build", "--release", "--quiet"])
        .current_dir(&dir)
        // A shared target folder keeps repeated runs incremental; the outer build's flags stay out.
        .env("CARGO_TARGET_DIR", work.join("target"))
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .output()
        .await
        .expect("cargo runs");
    assert!(build.status.success(), "the scaffold does not build:\n{}", String::from_utf8_lossy(&build.stderr));
    let wasm = work.join("target/wasm32-wasip2/release/my_policy.wasm");
    assert!(wasm.exists(), "{} was not built", wasm.display());

    let upstream = MockUpstream::builder().start().await;
    let plugins = plugin("mine", &wasm.display().to_string(), "on_error = \"closed\"");
    let gw = TestGateway::start(&config(&upstream, &[("guarded", "mine")], &plugins, "")).await;
    let url = format!("{}/chat/completions", gw.base_url());
    let (status, _, body) = post(&url, &chat_body("guarded"), None).await;
    assert_eq!(status, 200, "{body}");
    let response = reqwest::Client::new()
        .post(&url)
        .header("x-deny", "yes")
        .body(chat_body("guarded"))
        .send()
        .await
        .expect("send");
    assert_eq!(response.status().as_u16(), 403);
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&packaged);
}

#[tokio::test]
async fn on_response_headers_can_send_a_failed_attempt_to_another_target() {
    let broken = MockUpstream::builder().always_fail(503).start().await;
    let healthy = MockUpstream::builder().start().await;
    let text = format!(
        r#"
chain = []
[server]
listen = "127.0.0.1:0"
[retry]
backoff_base = "1ms"
backoff_max = "2ms"
[[upstreams]]
name = "broken"
endpoint = "{}"
[[upstreams]]
name = "healthy"
endpoint = "{}"
[[models]]
name = "m"
targets = [{{ upstream = "broken", model = "a" }}]
plugins = ["steer"]
[[models]]
name = "spare"
targets = [{{ upstream = "healthy", model = "b" }}]
{}"#,
        broken.base_url(),
        healthy.base_url(),
        plugin("steer", weir_test_plugins::RETRY_ELSEWHERE, "config = { target = \"healthy/b\" }"),
    );
    let gw = TestGateway::start(&text).await;
    let (status, _, body) = chat(&gw, "m").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (broken.request_count(), healthy.request_count()),
        (1, 1),
        "one failed attempt, then the plugin's target"
    );
    assert_eq!(healthy.requests()[0].json()["model"], "b");
}

/// A gateway started from a config file in a folder of its own, with a plugin that blocks
/// `x-block` requests to `guarded`, and the file's text; `plugins = []` unblocks them.
struct Watched {
    _upstream: MockUpstream,
    dir: std::path::PathBuf,
    file: std::path::PathBuf,
    guarded: String,
    gw: TestGateway,
}

impl Watched {
    async fn start() -> Self {
        let upstream = MockUpstream::builder().start().await;
        let dir = std::env::temp_dir().join(format!("weir-watch-{}-{}", std::process::id(), rand_suffix()));
        std::fs::create_dir_all(&dir).expect("dir");
        let file = dir.join("weir.toml");
        let guarded =
            config(&upstream, &[("guarded", "gate")], &plugin("gate", weir_test_plugins::REJECT_HEADER, ""), "");
        std::fs::write(&file, &guarded).expect("write");
        let loaded = weir_config::load_file(&file, &weir_config::MapEnv::default()).expect("config");
        let gw = TestGateway::start_with(loaded).await;
        Self { _upstream: upstream, dir, file, guarded, gw }
    }

    fn unguarded(&self) -> String {
        self.guarded.replace("plugins = [\"gate\"]", "plugins = []")
    }

    /// Whether `guarded` lets the request through within five seconds.
    async fn unblocked(&self) -> bool {
        for _ in 0..100 {
            if chat_with_header(&self.gw, "guarded", "x-block").await == 200 {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test]
async fn editing_the_config_file_reloads_it() {
    let w = Watched::start().await;
    let _watcher = weir::reload::watch_files(w.gw.gateway.clone()).expect("a watcher");
    assert_eq!(chat_with_header(&w.gw, "guarded", "x-block").await, 403);

    std::fs::write(&w.file, w.unguarded()).expect("write");
    assert!(w.unblocked().await, "the edited file was not picked up");
}

/// A deploy tool writes the new config beside the old and renames it into place; a usage ledger
/// kept in the same folder is appended to all the while and reloads nothing.
#[tokio::test]
async fn a_config_renamed_into_place_reloads_it_and_appends_beside_it_do_not() {
    let w = Watched::start().await;
    let watcher = weir::reload::watch_files(w.gw.gateway.clone()).expect("a watcher");
    let before = w.gw.gateway.current();

    let mut ledger =
        std::fs::OpenOptions::new().create(true).append(true).open(w.dir.join("ledger.jsonl")).expect("ledger");
    for i in 0..200 {
        std::io::Write::write_all(&mut ledger, format!("{{\"n\":{i}}}\n").as_bytes()).expect("append");
    }
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(Arc::ptr_eq(&before, &w.gw.gateway.current()), "appends to another file of the folder reloaded the config");

    let staged = w.dir.join(".weir.toml.tmp");
    std::fs::write(&staged, w.unguarded()).expect("write");
    std::fs::rename(&staged, &w.file).expect("rename");
    assert!(w.unblocked().await, "the renamed file was not picked up");

    // Dropped, the watcher stops: a later edit is not picked up.
    drop(watcher);
    tokio::time::sleep(Duration::from_millis(50)).await;
    std::fs::write(&w.file, &w.guarded).expect("write");
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(chat_with_header(&w.gw, "guarded", "x-block").await, 200, "a dropped watcher still reloaded");
}

#[tokio::test]
async fn built_in_plugins_are_embedded_in_the_binary() {
    let upstream = MockUpstream::builder().start().await;
    let plugins = plugin(
        "hello",
        "builtin:hello-policy",
        "on_error = \"closed\"\nconfig = { blocked_users = [\"mallory\"], requests_per_minute = 100 }",
    );
    let gw = TestGateway::start(&config(&upstream, &[("m", "hello")], &plugins, "")).await;
    let url = format!("{}/chat/completions", gw.base_url());
    let (status, headers, body) = post(&url, &chat_body("m"), None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        headers.get("x-hello-policy").map(|v| v.to_str().expect("ascii")),
        Some("seen"),
        "the embedded plugin ran"
    );
    let blocked = r#"{"model":"m","user":"mallory","messages":[{"role":"user","content":"x"}]}"#;
    assert_eq!(post(&url, blocked, None).await.0, 403);

    let unknown = config(&upstream, &[("m", "ghost")], &plugin("ghost", "builtin:no-such-plugin", ""), "");
    let error = load_error(&unknown).await;
    assert!(error.contains("no built-in plugin \"no-such-plugin\"") && error.contains("hello-policy"), "{error}");
}

/// What a plugin prints reaches the gateway's log, and a panic's message is on its fault's line:
/// the fault says why the plugin panicked, not only that `unreachable` was executed.
#[tokio::test]
async fn a_plugins_output_and_its_panic_message_reach_the_gateways_log() {
    use crate::processes::{WeirProcess, free_port, temp_dir};
    let upstream = MockUpstream::builder().start().await;
    let addr: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let text =
        config(&upstream, &[("m-trap", "trap")], &plugin("trap", weir_test_plugins::TRAP, "on_error = \"closed\""), "")
            .replace("listen = \"127.0.0.1:0\"", &format!("listen = \"{addr}\""));
    let weir = WeirProcess::start(&temp_dir("plugin-output"), "weir", addr, &text).await;
    let (status, _, body) = post(&weir.url("/v1/chat/completions"), &chat_body("m-trap"), None).await;
    assert_eq!(status, 500, "{body}");

    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let log = std::fs::read_to_string(&weir.log).unwrap_or_default();
        let printed =
            log.lines().any(|l| l.contains("weir-test-plugin-trap is about to panic") && l.contains("stdout"));
        let fault = log.lines().find(|l| l.contains("plugin fault"));
        if let Some(fault) = fault.filter(|_| printed) {
            assert!(fault.contains("panicked at"), "{fault}");
            assert!(fault.contains("weir-test-plugin-trap panics in on-request on purpose"), "{fault}");
            assert!(!fault.contains("RUST_BACKTRACE"), "Rust's note is noise here: {fault}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the log lacks the plugin's output or its fault:\n{log}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A panic in `init` (a config it cannot read, unwrapped) is a load error that says why.
#[tokio::test]
async fn a_panic_in_init_is_a_load_error_with_its_message() {
    let upstream = MockUpstream::builder().start().await;
    let plugins = plugin("trap", weir_test_plugins::TRAP, "config = { in = \"init\" }");
    let error = load_error(&config(&upstream, &[("m-trap", "trap")], &plugins, "")).await;
    assert!(error.contains("panicked at") && error.contains("panics in init on purpose"), "{error}");
}

/// `weir_sdk::config` reads a plugin's config table and names the field a bad one gets wrong (the
/// gateway refuses to load it with that), and `weir_sdk::time_left` reads what is left of the call.
#[tokio::test]
async fn a_plugin_reads_its_typed_config_and_the_time_left_to_its_call() {
    let upstream = MockUpstream::builder().start().await;
    let tagged = |table: &str| {
        let settings = format!("on_error = \"closed\"\ndeadline = \"2s\"\nconfig = {table}");
        config(&upstream, &[("tagged", "tag")], &plugin("tag", weir_test_plugins::HEADER_TAG, &settings), "")
    };

    let error = load_error(&tagged("{ version = 5 }")).await;
    assert!(error.contains("header-tag config: version: invalid type: integer `5`, expected a string"), "{error}");

    let gw = TestGateway::start(&tagged("{ version = \"v1\" }")).await;
    let (status, headers, body) =
        post(&format!("{}/chat/completions", gw.base_url()), &chat_body("tagged"), None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(headers["x-plugin-version"], "v1");
    let left: u64 = headers["x-plugin-time-left-us"].to_str().expect("ascii").parse().expect("a number");
    // A call that has barely begun has nearly all of its 2 s deadline left, and never more.
    assert!((1_000_000..=2_000_000).contains(&left), "{left} µs left of a 2 s deadline");
}
