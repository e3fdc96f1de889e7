//! `weir plugin new NAME`: a plugin crate that builds as it is, for authors to start from.

use std::io;
use std::path::Path;

/// Writes a new plugin crate into `dir` (which must not exist), depending on the SDK at `sdk`.
pub fn scaffold(dir: &Path, name: &str, sdk: &Path) -> io::Result<()> {
    if !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') || name.is_empty() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "a plugin name is letters, digits, - and _"));
    }
    if dir.exists() {
        return Err(io::Error::new(io::ErrorKind::AlreadyExists, format!("{} already exists", dir.display())));
    }
    std::fs::create_dir_all(dir.join("src"))?;
    std::fs::create_dir_all(dir.join(".cargo"))?;
    let lib = name.replace('-', "_");
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
weir-sdk = {{ path = "{}" }}

# A plugin is its own workspace, built for wasm32-wasip2 (see .cargo/config.toml).
[workspace]

[profile.release]
opt-level = "s"
lto = true
strip = true
"#,
            sdk.display()
        ),
    )?;
    std::fs::write(dir.join(".cargo/config.toml"), "[build]\ntarget = \"wasm32-wasip2\"\n")?;
    std::fs::write(
        dir.join("src/lib.rs"),
        r#"//! A Weir policy plugin. Build: `cargo build --release`; load the component
//! `target/wasm32-wasip2/release/LIB.wasm` with a `[[plugins]]` entry in the gateway's config.

use weir_sdk::{Completion, Decision, HookSet, Plugin, PluginInfo, Rejection, Request, kv, log};

/// Refuses requests that carry `x-deny: yes`, and counts completed requests per model.
struct MyPlugin;

impl Plugin for MyPlugin {
    fn init(_config: &str) -> Result<(Self, PluginInfo), String> {
        // `_config` is this plugin's `config` table from the gateway's TOML, as JSON.
        let info = PluginInfo::hooks(HookSet::ON_REQUEST | HookSet::ON_COMPLETE).reading_headers(["x-deny"]);
        Ok((MyPlugin, info))
    }

    fn on_request(&self, req: &Request) -> Decision {
        if req.header("x-deny").as_deref() == Some("yes") {
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
