//! Property tests of configuration loading: any text, any edit of the example files, and any value
//! at any setting's place load or fail with field errors, never a panic; `${…}` interpolation
//! handles any string; and a config that loads keeps what it was given. Case counts are bounded so
//! that the suite stays quick; `PROPTEST_CASES` raises them.

use std::path::Path;

use proptest::prelude::*;
use weir_config::{ConfigError, MapEnv, load_str};

const EXAMPLES: [&str; 8] = [
    include_str!("../examples/full.toml"),
    include_str!("../examples/default.toml"),
    include_str!("../examples/plugins.toml"),
    include_str!("../examples/bedrock.toml"),
    include_str!("../examples/vertex-gemini.toml"),
    include_str!("../examples/azure-openai.toml"),
    include_str!("../examples/openai-with-fallback.toml"),
    include_str!("../examples/workers.toml"),
];

fn env() -> MapEnv {
    MapEnv::from_pairs([("OPENAI_API_KEY", "sk-test"), ("WEIR_KEY_NOTEBOOKS", "nb-0123456789abcdef"), ("E", "x")])
}

fn load(text: &str) -> Result<weir_config::Config, ConfigError> {
    load_str(text, &env(), Path::new("/etc/weir"))
}

/// A TOML value of any kind, as text.
fn toml_value() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        (-1e6f64..1e6).prop_map(|f| format!("{f:?}")),
        any::<bool>().prop_map(|b| b.to_string()),
        "[a-zA-Z0-9 .:/_${}-]{0,16}".prop_map(|s| format!("{s:?}")),
        prop_oneof![
            Just("0s"),
            Just("1ms"),
            Just("5m"),
            Just("soon"),
            Just("-1s"),
            Just("18446744073709551615s"),
            Just("1KiB"),
            Just("16MiB"),
            Just("4GiB"),
            Just("1TiB")
        ]
        .prop_map(|s| format!("{s:?}")),
        Just("[]".to_owned()),
        Just("{}".to_owned()),
        Just("[1, \"a\"]".to_owned()),
    ]
}

fn config() -> ProptestConfig {
    ProptestConfig { cases: 256, max_shrink_iters: 1024, ..ProptestConfig::default() }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn any_text_loads_or_is_refused(text in "[\\[\\]a-z_=\"{}., 0-9\n$:-]{0,200}") {
        let _ = load(&text);
    }

    #[test]
    fn any_edit_of_an_example_loads_or_names_what_is_wrong(
        example in 0..EXAMPLES.len(),
        edits in prop::collection::vec((any::<usize>(), prop_oneof![Just(None), toml_value().prop_map(Some)]), 1..6),
    ) {
        let mut lines: Vec<String> = EXAMPLES[example].lines().map(str::to_owned).collect();
        for (at, edit) in edits {
            let at = at % lines.len();
            match edit {
                // A line removed.
                None => {
                    lines.remove(at);
                }
                // A setting given a value of any kind.
                Some(value) => {
                    if let Some((key, _)) = lines[at].split_once('=') {
                        lines[at] = format!("{}= {value}", key);
                    }
                }
            }
            if lines.is_empty() {
                break;
            }
        }
        match load(&lines.join("\n")) {
            Ok(_) | Err(ConfigError::Syntax(_)) => {}
            Err(ConfigError::Invalid(errors)) => {
                prop_assert!(!errors.is_empty());
                for e in errors {
                    prop_assert!(!e.message.is_empty(), "{e:?}");
                }
            }
            Err(other) => prop_assert!(false, "{other}"),
        }
    }

    #[test]
    fn interpolation_handles_any_string(value in "[a-zA-Z_$:{}\\-]{0,24}") {
        let text = format!("[[upstreams]]\nname = \"u\"\nendpoint = \"http://x\"\napi_key = {value:?}\n[[models]]\nname = \"m\"\ntargets = [{{ upstream = \"u\", model = \"x\" }}]\n");
        match load(&text) {
            Ok(config) => {
                // What is not a `${…}` reference is kept as written (`$$` is one `$`).
                if !value.contains('$') {
                    let key = config.upstreams[0].api_key.as_ref().map(|k| k.expose().to_owned()).unwrap_or_default();
                    prop_assert_eq!(key, value);
                }
            }
            Err(ConfigError::Invalid(errors)) => {
                prop_assert!(errors.iter().all(|e| e.path.starts_with("upstreams")), "{errors:?}");
            }
            Err(other) => prop_assert!(false, "{other}"),
        }
    }

    #[test]
    fn server_settings_that_load_are_the_ones_given(
        max_connections in 1i64..1_000_000,
        idle in 1u64..100_000,
        header in 1u64..100_000,
    ) {
        let text = format!(
            "[server]\nmax_connections = {max_connections}\nidle_timeout = \"{idle}ms\"\nheader_read_timeout = \"{header}ms\"\n[[upstreams]]\nname = \"u\"\nendpoint = \"http://x\"\n[[models]]\nname = \"m\"\ntargets = [{{ upstream = \"u\", model = \"x\" }}]\n"
        );
        let config = load(&text).expect("valid");
        prop_assert_eq!(config.server.max_connections as i64, max_connections);
        prop_assert_eq!(config.server.idle_timeout.as_millis() as u64, idle);
        prop_assert_eq!(config.server.header_read_timeout.as_millis() as u64, header);
    }
}
