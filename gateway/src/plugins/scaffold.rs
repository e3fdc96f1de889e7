//! `weir plugin new NAME`: a plugin crate that builds as it is, for authors to start from.

use std::io;
use std::path::Path;

/// The `weir-sdk` a new plugin depends on: the version of the SDK this gateway was built with,
/// whose contract it serves.
pub const SDK_VERSION: &str = "0.3.0";

/// Writes a new plugin crate into `dir` (which must not exist), depending on `weir-sdk` by
/// version; with `sdk`, a `[patch.crates-io]` section builds it against the SDK at that path
/// instead (a checkout of Weir, or an unpacked crate), for development.
pub fn scaffold(dir: &Path, name: &str, sdk: Option<&Path>) -> io::Result<()> {
    if !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') || name.is_empty() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "a plugin name is letters, digits, - and _"));
    }
    if dir.exists() {
        return Err(io::Error::new(io::ErrorKind::AlreadyExists, format!("{} already exists", dir.display())));
    }
    std::fs::create_dir_all(dir.join("src"))?;
    std::fs::create_dir_all(dir.join(".cargo"))?;
    let lib = name.replace('-', "_");
    let patch = sdk.map_or_else(String::new, |sdk| {
        // TOML basic strings escape backslashes and quotes (a Windows path has the former).
        let path = sdk.display().to_string().replace('\\', "\\\\").replace('"', "\\\"");
        format!(
            "\n# Development: weir-sdk from this path instead of crates.io (delete this section to use the\n# published crate).\n[patch.crates-io]\nweir-sdk = {{ path = \"{path}\" }}\n"
        )
    });
    std::fs::write(
        dir.join("Cargo.toml"),
        format!(
            r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2024"

[lib]
crate-type = ["cdylib"]

[dependencies]
weir-sdk = "{SDK_VERSION}"
serde = {{ version = "1", features = ["derive"] }}

# A plugin is its own workspace, built for wasm32-wasip2 (see .cargo/config.toml).
[workspace]
{patch}
[profile.release]
opt-level = "s"
lto = true
# Debug info goes, function names stay: a fault's backtrace (the gateway logs it at debug level)
# then names this crate's functions instead of `<wasm function N>`.
strip = "debuginfo"
"#
        ),
    )?;
    std::fs::write(dir.join(".cargo/config.toml"), "[build]\ntarget = \"wasm32-wasip2\"\n")?;
    std::fs::write(
        dir.join("src/lib.rs"),
        r#"//! A Weir policy plugin. Build: `cargo build --release`; load the component
//! `target/wasm32-wasip2/release/LIB.wasm` with a `[[plugins]]` entry in the gateway's config.

use weir_sdk::{Completion, Decision, HookSet, Plugin, PluginInfo, Rejection, Request, kv, log};

/// This plugin's `config` table in the gateway's TOML, e.g. `config = { header = "x-deny" }`.
#[derive(serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Config {
    /// The request header that, set to `yes`, gets a request refused.
    header: String,
}

impl Default for Config {
    fn default() -> Self {
        Self { header: "x-deny".into() }
    }
}

/// Refuses requests that carry `x-deny: yes`, and counts completed requests per model.
struct MyPlugin {
    header: String,
}

impl Plugin for MyPlugin {
    fn init(config: &str) -> Result<(Self, PluginInfo), String> {
        // An error names the field at fault, and the gateway refuses the config with it.
        let config: Config = weir_sdk::config(config)?;
        let info =
            PluginInfo::hooks(HookSet::ON_REQUEST | HookSet::ON_COMPLETE).reading_headers([config.header.clone()]);
        Ok((MyPlugin { header: config.header }, info))
    }

    fn on_request(&self, req: &Request) -> Decision {
        if req.header(&self.header).as_deref() == Some("yes") {
            return Decision::Reject(Rejection {
                status: 403,
                code: "denied".into(),
                message: "this request was denied by policy".into(),
                retry_after_ms: None,
            });
        }
        Decision::Continue
    }

    fn on_complete(&self, req: &Request, outcome: Completion) {
        let model = req.info().model;
        let total = kv::add(&format!("completed:{model}"), 1, 0);
        // `println!` and `eprintln!` also reach the gateway's log (at info and warn).
        log::log(log::Level::Debug, &format!("{model}: {total} completed, last status {}", outcome.status));
    }
}

weir_sdk::export_plugin!(MyPlugin);
"#
        .replace("LIB", &lib),
    )?;
    std::fs::write(
        dir.join("README.md"),
        format!(
            "# {name}\n\nA Weir policy plugin.\n\n```sh\ncargo build --release\n```\n\nThen in the gateway's config:\n\n```toml\n[[plugins]]\nname = \"{name}\"\nsource = \"{}/target/wasm32-wasip2/release/{lib}.wasm\"\non_error = \"open\"\n```\n",
            dir.display()
        ),
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scaffold_asks_for_the_sdk_version_in_the_tree() {
        let manifest = include_str!("../../../sdk/Cargo.toml");
        assert!(
            manifest.lines().any(|l| l == format!("version = \"{SDK_VERSION}\"")),
            "sdk/Cargo.toml's version is not {SDK_VERSION}"
        );
    }

    #[test]
    fn without_a_path_the_scaffold_depends_on_the_published_sdk_only() {
        let dir = std::env::temp_dir().join(format!("weir-scaffold-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        scaffold(&dir, "p", None).expect("scaffold");
        let manifest = std::fs::read_to_string(dir.join("Cargo.toml")).expect("manifest");
        let _ = std::fs::remove_dir_all(&dir);
        assert!(manifest.contains(&format!("weir-sdk = \"{SDK_VERSION}\"")), "{manifest}");
        assert!(!manifest.contains("[patch"), "{manifest}");
        assert!(!manifest.contains("path ="), "no path of this machine: {manifest}");
    }
}
