//! The official `openai` Python SDK against the gateway: the drop-in promise checked by the client
//! most users actually run. `.ci/run` installs the package; without it this test fails and says how.

use std::process::Stdio;
use std::time::Duration;

use weir_bench::mock::MockUpstream;

use crate::support::{TestGateway, strict_config};

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
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/openai_sdk.py");
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".to_owned());
    let child = tokio::process::Command::new(&python)
        .arg(script)
        .env("WEIR_BASE_URL", gw.base_url())
        .env("WEIR_API_KEY", "sk-weir-python-0123456789")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {python}: {e}"));
    let output = tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
        .await
        .expect("the script finishes")
        .expect("output");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "openai SDK conformance failed (install it with `pip install openai`):\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains(" passed, 0 failed"), "{stdout}");
}
