//! The deployment files in `config/deploy/` (the Dockerfile's config, the Kubernetes manifests, the
//! sidecar example and the KEDA `ScaledObject`): validated against the Kubernetes and KEDA schemas,
//! checked against each other, and every Weir configuration in them through `weir config check`.
//! The work is in `gateway/tests/deploy_check.py`.

use std::path::Path;

#[tokio::test]
async fn the_manifests_validate_and_their_configs_pass_weir_config_check() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let node_modules = root.join("../target/deploy-check/node_modules");
    assert!(
        node_modules.join("@kubernetes-models/keda").is_dir(),
        "KEDA's schema package is missing from {}: run .ci/test, which installs it",
        node_modules.display()
    );
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".to_owned());
    let child = tokio::process::Command::new(&python)
        .arg(root.join("tests/deploy_check.py"))
        .env("WEIR_BIN", crate::processes::weir_bin())
        .env("WEIR_NODE_MODULES", &node_modules)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {python}: {e}"));
    let output = tokio::time::timeout(std::time::Duration::from_secs(600), child.wait_with_output())
        .await
        .expect("the check finishes")
        .expect("output");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "deploy_check.py failed (.ci/test installs its validators):\n{stdout}\n{stderr}");
    assert!(stdout.contains(" passed, 0 failed"), "{stdout}");
    let passed: u32 = stdout.lines().last().and_then(|l| l.split(' ').next()?.parse().ok()).unwrap_or(0);
    assert!(passed >= 40, "only {passed} checks ran:\n{stdout}");
}
