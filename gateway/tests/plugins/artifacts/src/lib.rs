//! Paths of the plugin components that the gateway's tests and benchmarks load.
//!
//! The build script compiles every fixture in `gateway/tests/plugins/*` (package
//! `weir-test-plugin-<dir>`) and every example in `plugins/examples/*` (package
//! `weir-example-<dir>`) for wasm32-wasip2, into `target/plugin-wasm`. Each gets a constant named
//! after its directory (`memory-bomb` → [`MEMORY_BOMB`]) holding the absolute path of its `.wasm`
//! component, and an entry in [`ALL`]. A new fixture directory is picked up by the next build.
//!
//! What each fixture does is in the `//!` line of its `src/lib.rs`.

include!(concat!(env!("OUT_DIR"), "/plugins.rs"));

/// The path of the component of the plugin in directory `name`, if there is one.
pub fn path(name: &str) -> Option<&'static str> {
    ALL.iter().find(|(plugin, _)| *plugin == name).map(|(_, path)| *path)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `\0asm` followed by the component-model version and layer (0x0d, then layer 1); a core
    /// module would have version 1, layer 0 (`01 00 00 00`).
    const COMPONENT_HEADER: [u8; 8] = [0x00, 0x61, 0x73, 0x6d, 0x0d, 0x00, 0x01, 0x00];

    #[test]
    fn every_artifact_is_a_component() {
        for (name, path) in ALL {
            let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{name}: read {path}: {e}"));
            assert!(
                bytes.starts_with(&COMPONENT_HEADER),
                "{name}: {path} does not start with the component header, but with {:02x?}",
                &bytes[..bytes.len().min(8)]
            );
        }
    }

    #[test]
    fn all_lists_every_fixture_and_the_example() {
        let names: Vec<&str> = ALL.iter().map(|(name, _)| *name).collect();
        for expected in [
            "bad-route",
            "giant-response",
            "header-tag",
            "hello-policy",
            "import-hammer",
            "loop",
            "memory-bomb",
            "metric-bomb",
            "noop",
            "reject-header",
            "trap",
        ] {
            assert!(names.contains(&expected), "{expected} is missing from ALL: {names:?}");
        }
        assert_eq!(path("noop"), Some(NOOP));
        assert_eq!(path("hello-policy"), Some(HELLO_POLICY));
        assert_eq!(path("no-such-plugin"), None);
    }
}
