//! The mock upstreams checked by each provider's own SDK (boto3, google-genai, openai's AzureOpenAI,
//! Responses and Completions clients, anthropic) through `mock_sdk_check.py`, so the mocks the gateway is tested against speak the real protocols.
//! `.ci/test` installs the packages; without them this test fails and says how.

use std::ffi::OsString;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use weir_bench::MockUpstream;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_providers_sdk_accepts_the_mock() {
    let mock =
        MockUpstream::builder().api_key("mock-key").aws_credentials("AKIDMOCKCHECK", "mock-secret").start().await;
    let dir = env!("CARGO_MANIFEST_DIR");
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".to_owned());
    let child = tokio::process::Command::new(&python)
        .arg(format!("{dir}/tests/mock_sdk_check.py"))
        // The runner the check scripts share, `gateway/tests/support/checks.py`.
        .env("PYTHONPATH", python_path(&Path::new(dir).join("../gateway/tests/support")))
        .env("MOCK_URL", format!("http://{}", mock.addr()))
        .env("MOCK_KEY", "mock-key")
        .env("MOCK_AWS_KEY_ID", "AKIDMOCKCHECK")
        .env("MOCK_SA_KEY", format!("{dir}/fixtures/vertex/test-key.pem"))
        // The SDKs must not pick up a developer's real credentials or config.
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        .env_remove("AWS_PROFILE")
        .env_remove("GOOGLE_APPLICATION_CREDENTIALS")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {python}: {e}"));
    let output = tokio::time::timeout(Duration::from_secs(180), child.wait_with_output())
        .await
        .expect("the script finishes")
        .expect("output");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "mock SDK checks failed (install the SDKs with `pip install boto3 google-genai openai anthropic`):\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains(" passed, 0 failed"), "{stdout}");
}

/// `dir` first on `PYTHONPATH`, then whatever the caller had.
fn python_path(dir: &Path) -> OsString {
    let inherited = std::env::var_os("PYTHONPATH").unwrap_or_default();
    std::env::join_paths(std::iter::once(dir.to_owned()).chain(std::env::split_paths(&inherited)))
        .expect("no path separator in the checkout's path")
}
