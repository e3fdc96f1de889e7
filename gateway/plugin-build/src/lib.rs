//! Builds Weir plugin crates for wasm32-wasip2 from a build script, with a nested `cargo build`.
//! Used by the gateway's build script (built-in plugins, embedded in the binary) and by the test
//! artifacts crate (fixtures and examples, loaded from files).
//!
//! The pattern is wasmtime's `crates/test-programs/artifacts/build.rs`. Plugin crates cannot be
//! ordinary dependencies, because they are compiled for another target; cargo's artifact
//! dependencies would do it but are unstable.
#![expect(clippy::print_stdout, reason = "cargo reads build-script directives from standard output")]

use std::env;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The target every plugin is built for. Rust's wasm32-wasip2 target links a component directly,
/// so no separate componentization step is needed.
pub const TARGET: &str = "wasm32-wasip2";

/// A plugin crate to build.
#[derive(Debug)]
pub struct PluginCrate {
    /// The crate's directory name, which is also its name in `ALL`.
    pub name: String,
    /// The cargo package, named by convention after the directory.
    pub package: String,
    /// The crate's directory.
    pub dir: PathBuf,
}

/// The plugin crates in the subdirectories of `dir` that hold a `Cargo.toml`, except `skip`.
pub fn discover(dir: &Path, package_prefix: &str, skip: &[&str]) -> Vec<PluginCrate> {
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
pub fn target_installed() -> bool {
    let rustc = env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let output = Command::new(rustc)
        .args(["--print", "target-libdir", "--target", TARGET])
        .output()
        .expect("run rustc --print target-libdir");
    output.status.success() && Path::new(String::from_utf8_lossy(&output.stdout).trim()).is_dir()
}

/// Tells cargo to rerun the calling build script when a plugin, the SDK, or the workspace's
/// manifest, lockfile or cargo config change, or when a plugin crate is added to one of `dirs`. The
/// nested cargo decides what actually needs rebuilding.
pub fn rerun_if_changed(workspace: &Path, dirs: &[&Path], crates: &[PluginCrate]) {
    let mut paths = vec![
        workspace.join("Cargo.toml"),
        workspace.join("Cargo.lock"),
        workspace.join(".cargo/config.toml"),
        workspace.join("sdk/Cargo.toml"),
        workspace.join("sdk/src"),
        workspace.join("sdk/wit"),
    ];
    paths.extend(dirs.iter().map(|d| d.to_path_buf()));
    for krate in crates {
        paths.push(krate.dir.join("Cargo.toml"));
        paths.push(krate.dir.join("src"));
    }
    // Relative to the package, which cargo resolves against the package's directory when it checks
    // them: cargo shares one build script run between checkouts of the same workspace in one target
    // directory (its hash leaves out where the workspace is), so absolute paths would make a fresh
    // clone's build trust another checkout's files, and embed that checkout's plugins.
    let manifest_dir = env::var_os("CARGO_MANIFEST_DIR").map(PathBuf::from);
    for path in paths {
        let shown = manifest_dir.as_deref().map_or_else(|| path.clone(), |dir| relative_to(dir, &path));
        println!("cargo::rerun-if-changed={}", shown.display());
    }
}

/// `path` as seen from `base` (both absolute): `..` up to their common ancestor, then down.
fn relative_to(base: &Path, path: &Path) -> PathBuf {
    let common = base.components().zip(path.components()).take_while(|(a, b)| a == b).count();
    let mut relative = PathBuf::new();
    for _ in base.components().skip(common) {
        relative.push("..");
    }
    for part in path.components().skip(common) {
        relative.push(part);
    }
    relative
}

/// Runs the nested `cargo build --release --target wasm32-wasip2 -p …` into `target_dir`.
pub fn build(workspace: &Path, target_dir: &Path, crates: &[PluginCrate]) -> Result<(), String> {
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

/// Where [`build`] leaves the component of `krate`.
pub fn wasm_path(target_dir: &Path, krate: &PluginCrate) -> PathBuf {
    target_dir.join(TARGET).join("release").join(format!("{}.wasm", krate.package.replace('-', "_")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_made_relative_to_the_package() {
        let package = Path::new("/src/weir/gateway/tests/plugins/artifacts");
        assert_eq!(relative_to(package, Path::new("/src/weir/Cargo.toml")), Path::new("../../../../Cargo.toml"));
        assert_eq!(
            relative_to(package, Path::new("/src/weir/gateway/tests/plugins/noop/src")),
            Path::new("../noop/src")
        );
        assert_eq!(
            relative_to(Path::new("/src/weir/gateway"), Path::new("/src/weir/gateway/build.rs")),
            Path::new("build.rs")
        );
    }
}
