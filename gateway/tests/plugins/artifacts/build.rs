//! Builds every plugin fixture (`gateway/tests/plugins/*`) and example (`plugins/examples/*`) for
//! wasm32-wasip2 with a nested `cargo build`, and writes their paths into `$OUT_DIR/plugins.rs`.
//!
//! The pattern is wasmtime's `crates/test-programs/artifacts/build.rs`. Plugin crates cannot be
//! ordinary dependencies of the gateway's tests, because they must be compiled for another target;
//! cargo's artifact dependencies would do it but are unstable.

use std::env;
use std::fmt::Write as _;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

/// The target every plugin is built for. Rust's wasm32-wasip2 target links a component directly,
/// so no separate componentization step is needed.
const TARGET: &str = "wasm32-wasip2";

/// A plugin crate to build.
struct PluginCrate {
    /// The crate's directory name, which is also its name in `ALL`.
    name: String,
    /// The cargo package, named by convention after the directory.
    package: String,
    /// The crate's directory.
    dir: PathBuf,
}

fn main() {
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    // This crate is `<workspace>/gateway/tests/plugins/artifacts`.
    let fixtures_dir = manifest_dir.parent().expect("the artifacts crate lives in gateway/tests/plugins").to_owned();
    let workspace = manifest_dir.ancestors().nth(4).expect("the artifacts crate lives four levels below the workspace");
    let examples_dir = workspace.join("plugins/examples");

    if !target_installed() {
        println!("cargo::error=the {TARGET} target is missing: run `rustup target add {TARGET}`");
        return;
    }

    let mut crates = discover(&fixtures_dir, "weir-test-plugin-", &["artifacts"]);
    crates.extend(discover(&examples_dir, "weir-example-", &[]));
    crates.sort_by(|a, b| a.name.cmp(&b.name));
    for pair in crates.windows(2) {
        assert_ne!(pair[0].name, pair[1].name, "a fixture and an example share a name; rename one");
    }

    rerun_if_changed(workspace, &fixtures_dir, &examples_dir, &crates);

    // A directory of its own rather than the workspace's `target/`: the outer build holds the lock on
    // its build directory while this script runs, so sharing it would deadlock. It is fixed (not
    // under OUT_DIR) so that debug, release and clippy runs share one incremental build.
    let target_dir = workspace.join("target/plugin-wasm");
    let started = Instant::now();
    if let Err(message) = build(workspace, &target_dir, &crates) {
        // A failing exit status rather than only `cargo::error`: cargo shows a build script's
        // stderr, which holds the nested compiler errors, only when the script fails.
        println!("cargo::error={message}");
        std::process::exit(1);
    }
    eprintln!("built {} plugins in {:.1?}", crates.len(), started.elapsed());

    let release_dir = target_dir.join(TARGET).join("release");
    fs::write(out_dir.join("plugins.rs"), generate(&release_dir, &crates)).expect("write $OUT_DIR/plugins.rs");
}

/// The plugin crates in the subdirectories of `dir` that hold a `Cargo.toml`, except `skip`.
fn discover(dir: &Path, package_prefix: &str, skip: &[&str]) -> Vec<PluginCrate> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Vec::new(),
        Err(e) => panic!("read {}: {e}", dir.display()),
    };
    let mut crates = Vec::new();
    for entry in entries {
        let dir = entry.expect("read a directory entry").path();
        let Some(name) = dir.file_name().and_then(|n| n.to_str()).map(str::to_owned) else { continue };
        if skip.contains(&name.as_str()) || !dir.join("Cargo.toml").is_file() {
            continue;
        }
        crates.push(PluginCrate { package: format!("{package_prefix}{name}"), name, dir });
    }
    crates
}

/// Whether the standard library for [`TARGET`] is installed for the rustc cargo is using.
fn target_installed() -> bool {
    let rustc = env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let output = Command::new(rustc)
        .args(["--print", "target-libdir", "--target", TARGET])
        .output()
        .expect("run rustc --print target-libdir");
    output.status.success() && Path::new(String::from_utf8_lossy(&output.stdout).trim()).is_dir()
}

/// Tells cargo to rerun this script when a plugin, the SDK or the workspace's manifest, lockfile or
/// cargo config change. The nested cargo decides what actually needs rebuilding.
fn rerun_if_changed(workspace: &Path, fixtures_dir: &Path, examples_dir: &Path, crates: &[PluginCrate]) {
    let mut paths = vec![
        workspace.join("Cargo.toml"),
        workspace.join("Cargo.lock"),
        workspace.join(".cargo/config.toml"),
        workspace.join("sdk/Cargo.toml"),
        workspace.join("sdk/src"),
        workspace.join("sdk/wit"),
        // The parent directories too, so that adding or removing a plugin crate reruns the script.
        fixtures_dir.to_owned(),
        examples_dir.to_owned(),
    ];
    for krate in crates {
        paths.push(krate.dir.join("Cargo.toml"));
        paths.push(krate.dir.join("src"));
    }
    for path in paths {
        println!("cargo::rerun-if-changed={}", path.display());
    }
}

/// Runs the nested `cargo build --release --target wasm32-wasip2 -p …` into `target_dir`.
fn build(workspace: &Path, target_dir: &Path, crates: &[PluginCrate]) -> Result<(), String> {
    // The cargo that runs this script, so a `cargo +toolchain` choice carries over.
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(workspace)
        .args(["build", "--release", "--locked", "--target", TARGET, "--target-dir"])
        .arg(target_dir)
        // `--locked`: the outer cargo has already resolved the workspace, and the nested one must
        // never rewrite `Cargo.lock` while the outer one (or a neighbour's build) reads it.
        //
        // Cargo hands build scripts the outer build's settings, and the nested cargo would read them
        // as its own. CARGO_ENCODED_RUSTFLAGS holds the host's flags (say `-C target-cpu=native`)
        // and overrides every other source of flags; RUSTFLAGS and CARGO_BUILD_RUSTFLAGS are the
        // same for a user who set them for the host build.
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_BUILD_RUSTFLAGS")
        // Under `cargo clippy` this is clippy-driver: the nested build would lint the plugins and,
        // because the wrapper is part of cargo's fingerprint, rebuild them every time one switches
        // between `cargo clippy` and `cargo build`. RUSTC_WRAPPER (e.g. sccache) is kept: it
        // works for any target and the user chose it.
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        // `--target-dir` already beats CARGO_TARGET_DIR; the build directory has no flag, and a
        // user's `build.build-dir` shared with the outer build would deadlock on its lock.
        .env("CARGO_BUILD_BUILD_DIR", target_dir)
        // The outer build's stdout is read as build-script directives; keep the nested output out
        // of it. Cargo shows this script's stderr when the build fails.
        .stdout(io::stderr());
    // Cargo's own internal variables (`__CARGO_FIX_PLZ` under `cargo fix`, …) are not meant for a
    // cargo started by a build script.
    for (key, _) in env::vars_os() {
        if key.to_string_lossy().starts_with("__CARGO") {
            cmd.env_remove(key);
        }
    }
    for krate in crates {
        cmd.args(["-p", &krate.package]);
    }
    eprintln!("running: {cmd:?}");
    let status = cmd.status().map_err(|e| format!("could not run the nested cargo build: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!(
            "building the plugins for {TARGET} failed ({status}); see the nested cargo's output in this script's stderr"
        ))
    }
}

/// The text of `plugins.rs`: one constant per plugin, then `ALL`.
fn generate(release_dir: &Path, crates: &[PluginCrate]) -> String {
    let mut code = String::from("// @generated by weir-test-plugins' build.rs.\n\n");
    for krate in crates {
        let wasm = release_dir.join(format!("{}.wasm", krate.package.replace('-', "_")));
        let path = wasm.to_str().expect("plugin paths are UTF-8");
        let _ = writeln!(code, "/// The component built from `{}`.", krate.package);
        let _ = writeln!(code, "pub const {}: &str = {path:?};", const_name(&krate.name));
    }
    code.push_str("\n/// Every plugin, as (directory name, path of its component), sorted by name.\n");
    code.push_str("pub const ALL: &[(&str, &str)] = &[\n");
    for krate in crates {
        let _ = writeln!(code, "    ({:?}, {}),", krate.name, const_name(&krate.name));
    }
    code.push_str("];\n");
    code
}

/// `memory-bomb` → `MEMORY_BOMB`.
fn const_name(name: &str) -> String {
    name.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_uppercase() } else { '_' }).collect()
}
