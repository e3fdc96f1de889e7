//! The official `openai` Python SDK against the gateway: the drop-in promise checked by the client
//! most users actually run. `.ci/run` installs the package; without it this test fails and says how.

use weir_bench::mock::MockUpstream;

use crate::support::{TestGateway, bare_config, run_python_script, strict_config};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openai_python_sdk_works_against_the_gateway() {
    let upstream = MockUpstream::builder().start().await;
    let healthy_then_broken = MockUpstream::builder().break_stream_after(2).start().await;
    let extra = format!(
        r#"
[[upstreams]]
name = "breaks"
endpoint = "{}"

[[models]]
name = "breaks-mid-stream"
targets = [{{ upstream = "breaks", model = "mock-model" }}]

[[models]]
name = "fixture:n3_choices"
targets = [{{ upstream = "mock", model = "fixture:n3_choices" }}]

[[models]]
name = "embed"
targets = [{{ upstream = "mock", model = "text-embedding-3-small" }}]

[[keys]]
name = "python-sdk"
team = "conformance"
key = "sk-weir-python-0123456789"
"#,
        healthy_then_broken.base_url()
    );
    // No wildcard here: unknown models must be the gateway's 404.
    let gw = TestGateway::start(&strict_config(&upstream.base_url(), &extra)).await;
    run_script(&gw, "openai_sdk.py").await;
}

/// Runs a conformance script against the gateway; it must exit 0 and report no failure.
async fn run_script(gw: &TestGateway, name: &str) {
    let stdout = run_python_script(gw, name, "sk-weir-python-0123456789").await;
    // Shown with `--nocapture`: which checks ran.
    eprintln!("{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openai_sdk_gets_correct_answers_from_every_provider() {
    let mock = MockUpstream::builder().api_key("mock-key").aws_credentials("AKIDPYTHON", "secret").start().await;
    let base = format!("http://{}", mock.addr());
    let key = include_str!("../../../bench/fixtures/vertex/test-key.pem");
    let sa = crate::support::state_dir().join(format!("python-sa-{}.json", mock.addr().port()));
    std::fs::create_dir_all(crate::support::state_dir()).expect("state dir");
    let account = serde_json::json!({
        "type": "service_account", "project_id": "proj-1", "private_key": key,
        "client_email": "weir@proj-1.iam.gserviceaccount.com", "token_uri": format!("{base}/token"),
    });
    std::fs::write(&sa, account.to_string()).expect("key file");
    let config = bare_config(&format!(
        r#"
[[upstreams]]
name = "bedrock"
kind = "bedrock"
endpoint = "{base}"
region = "us-east-1"
access_key_id = "AKIDPYTHON"
secret_access_key = "secret"

[[upstreams]]
name = "gemini"
kind = "gemini"
endpoint = "{base}"
api_key = "mock-key"

[[upstreams]]
name = "vertex"
kind = "vertex"
endpoint = "{base}"
project = "proj-1"
location = "us-central1"
credentials_file = "{sa}"

[[upstreams]]
name = "azure"
kind = "azure-openai"
endpoint = "{base}"
api_version = "2024-10-21"
api_key = "mock-key"

[[models]]
name = "bedrock"
targets = [{{ upstream = "bedrock", model = "anthropic.claude-3-5-sonnet-20240620-v1:0" }}]
[[models]]
name = "gemini"
targets = [{{ upstream = "gemini", model = "gemini-2.5-flash" }}]
[[models]]
name = "vertex"
targets = [{{ upstream = "vertex", model = "gemini-2.5-pro" }}]
[[models]]
name = "azure"
targets = [{{ upstream = "azure", model = "gpt-4o" }}]
[[models]]
name = "bedrock-embed"
targets = [{{ upstream = "bedrock", model = "amazon.titan-embed-text-v2:0" }}]
[[models]]
name = "gemini-embed"
targets = [{{ upstream = "gemini", model = "gemini-embedding-001" }}]
[[models]]
name = "vertex-embed"
targets = [{{ upstream = "vertex", model = "text-embedding-005" }}]
[[models]]
name = "azure-embed"
targets = [{{ upstream = "azure", model = "text-embedding-3-small" }}]

[[keys]]
name = "python-sdk"
team = "conformance"
key = "sk-weir-python-0123456789"
"#,
        sa = sa.display()
    ));
    let gw = TestGateway::start(&config).await;
    run_script(&gw, "openai_sdk_providers.py").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openai_sdk_reads_a_continued_stream_as_one_answer() {
    // Three events (role, "echo:", " one"), then the connection breaks / the stream stalls.
    let breaks = MockUpstream::builder().break_stream_after(3).start().await;
    let stalls = MockUpstream::builder().stall_stream_after(3).start().await;
    let vllm = MockUpstream::builder().start().await;
    let no_prefill = MockUpstream::builder().refuse_prefill().start().await;
    let config = bare_config(&format!(
        r#"
[failover]
mid_stream = "continue"

[[upstreams]]
name = "breaks"
endpoint = "{}"
[[upstreams]]
name = "stalls"
endpoint = "{}"
timeouts = {{ idle = "300ms" }}
[[upstreams]]
name = "vllm"
endpoint = "{}"
prefill = "continue-final-message"
[[upstreams]]
name = "no-prefill"
endpoint = "{}"
prefill = "continue-final-message"
[[upstreams]]
name = "plain"
endpoint = "{}"

[[models]]
name = "continues"
targets = [{{ upstream = "breaks", model = "mock-model" }}, {{ upstream = "vllm", model = "mock-model" }}]
[[models]]
name = "restarts"
targets = [{{ upstream = "stalls", model = "mock-model" }}, {{ upstream = "no-prefill", model = "mock-model" }}]
[[models]]
name = "differs"
targets = [{{ upstream = "breaks", model = "mock-model" }}, {{ upstream = "plain", model = "fixture:text_a" }}]

[[keys]]
name = "python-sdk"
team = "conformance"
key = "sk-weir-python-0123456789"
"#,
        breaks.base_url(),
        stalls.base_url(),
        vllm.base_url(),
        no_prefill.base_url(),
        vllm.base_url()
    ));
    let gw = TestGateway::start(&config).await;
    run_script(&gw, "openai_sdk_failover.py").await;
}
