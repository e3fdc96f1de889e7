//! Tidy checks over the whole workspace, as rust-analyzer's `tidy.rs` and wasmtime's test-program
//! checks do: every Rust source file opens with a `//!` line, and every plugin fixture
//! (`gateway/tests/plugins/<name>/`) and example (`plugins/examples/<name>/`) is loaded by a test.

use std::fs;
use std::path::{Path, PathBuf};

/// Every `.rs` file of the workspace must say what it is on its first line (STYLE.md §7).
#[test]
fn every_rust_file_opens_with_a_module_doc_line() {
    let root = workspace();
    let mut files = Vec::new();
    rust_files(&root, &mut files);
    // Guards the walk itself: a check over no files would pass whatever the tree holds.
    assert!(files.len() > 50, "found only {} .rs files under {}", files.len(), root.display());
    let missing: Vec<String> = files
        .iter()
        .filter(|file| {
            let text = fs::read_to_string(file).unwrap_or_else(|e| panic!("read {}: {e}", file.display()));
            !text.starts_with("//!")
        })
        .map(|file| relative(&root, file))
        .collect();
    assert!(
        missing.is_empty(),
        "these files do not open with a `//!` line saying what they are:\n  {}",
        missing.join("\n  ")
    );
}

/// A fixture no test loads is dead weight that still costs a wasm build on every test run, and an
/// example no test loads may no longer work. "Loads" means a test names its component: the
/// constant `weir-test-plugins` generates for it (`memory-bomb` → `…::MEMORY_BOMB`), or
/// `weir_test_plugins::path("memory-bomb")`, or for an example, the built-in it is served as
/// (`builtin:stream-redact`).
#[test]
fn every_plugin_fixture_and_example_is_loaded_by_a_test() {
    let root = workspace();
    let fixtures = root.join("gateway/tests/plugins");
    let mut plugins = plugin_dirs(&fixtures, &["artifacts"]);
    plugins.extend(plugin_dirs(&root.join("plugins/examples"), &[]));
    assert!(plugins.iter().any(|p| p == "noop"), "no fixtures found under {}", fixtures.display());

    // The tests and benchmarks that load plugins; not the fixtures' own sources.
    let mut sources = Vec::new();
    for dir in ["gateway/tests", "gateway/benches", "bench/tests"] {
        rust_files(&root.join(dir), &mut sources);
    }
    sources.retain(|file| !file.starts_with(&fixtures));
    let text: String = sources.iter().map(|f| fs::read_to_string(f).expect("read a test source")).collect();

    let unloaded: Vec<&String> = plugins
        .iter()
        .filter(|name| {
            let constant = format!("::{}", name.to_ascii_uppercase().replace('-', "_"));
            let by_path = format!("path(\"{name}\")");
            let as_builtin = format!("\"builtin:{name}\"");
            !mentions_word(&text, &constant) && !text.contains(&by_path) && !text.contains(&as_builtin)
        })
        .collect();
    assert!(
        unloaded.is_empty(),
        "no test loads these plugins (name `weir_test_plugins::NAME` in one, or delete the plugin): {unloaded:?}"
    );
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the gateway crate lives in the workspace").to_owned()
}

/// Every `.rs` file under `dir`, skipping build output (`target/`) and hidden directories.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let entries = fs::read_dir(dir).unwrap_or_else(|e| panic!("read {}: {e}", dir.display()));
    for entry in entries {
        let path = entry.expect("a directory entry").path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if path.is_dir() {
            if name != "target" && !name.starts_with('.') {
                rust_files(&path, out);
            }
        } else if name.ends_with(".rs") {
            out.push(path);
        }
    }
}

/// The names of the plugin crates directly under `dir` (folders with a `Cargo.toml`), less `skip`.
fn plugin_dirs(dir: &Path, skip: &[&str]) -> Vec<String> {
    let entries = fs::read_dir(dir).unwrap_or_else(|e| panic!("read {}: {e}", dir.display()));
    let mut names: Vec<String> = entries
        .map(|entry| entry.expect("a directory entry").path())
        .filter(|path| path.join("Cargo.toml").is_file())
        .filter_map(|path| path.file_name().and_then(|n| n.to_str()).map(str::to_owned))
        .filter(|name| !skip.contains(&name.as_str()))
        .collect();
    names.sort();
    names
}

/// Whether `text` contains `needle` not followed by another identifier character, so that
/// `::LOOP` does not count as a mention of `::LOOP_FOREVER`.
fn mentions_word(text: &str, needle: &str) -> bool {
    text.match_indices(needle)
        .any(|(at, _)| !text[at + needle.len()..].starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_'))
}

fn relative(root: &Path, file: &Path) -> String {
    file.strip_prefix(root).unwrap_or(file).display().to_string()
}

#[test]
fn a_mention_is_a_whole_name() {
    assert!(mentions_word("p::LOOP,", "::LOOP"));
    assert!(mentions_word("p::LOOP", "::LOOP"));
    assert!(!mentions_word("p::LOOP_FOREVER", "::LOOP"));
    assert!(mentions_word("p::LOOP_FOREVER, q::LOOP)", "::LOOP"));
}
