//! Loading configurations: every example parses, and every kind of mistake is reported at its path.

use std::path::Path;

use weir_config::{ConfigError, InstanceMode, MapEnv, OnError, PluginSource, load_file, load_str};

fn errors(text: &str) -> Vec<String> {
    match load_str(text, &MapEnv::default(), Path::new("/etc/weir")) {
        Err(ConfigError::Invalid(errs)) => errs.iter().map(ToString::to_string).collect(),
        Err(other) => vec![other.to_string()],
        Ok(_) => vec![],
    }
}

#[test]
fn every_example_parses() {
    let env = MapEnv::from_pairs([("OPENAI_API_KEY", "sk-test"), ("WEIR_KEY_NOTEBOOKS", "nb-0123456789abcdef")]);
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let config = load_file(&path, &env).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            assert!(!config.models.is_empty(), "{} serves no model", path.display());
            seen += 1;
        }
    }
    assert!(seen >= 3, "expected the examples in {}", dir.display());
}

#[test]
fn the_default_config_reads_its_upstream_from_the_environment() {
    let text = include_str!("../examples/default.toml");
    let env = MapEnv::from_pairs([("WEIR_UPSTREAM", "https://api.example.com/v1/"), ("WEIR_UPSTREAM_KEY", "sk-1")]);
    let c = load_str(text, &env, Path::new(".")).unwrap();
    assert_eq!(c.upstreams[0].endpoint, "https://api.example.com/v1");
    assert_eq!(c.upstreams[0].api_key.as_ref().unwrap().expose(), "sk-1");
    assert!(c.models[0].is_wildcard());
    assert!(c.keys.is_empty());

    let c = load_str(text, &MapEnv::default(), Path::new(".")).unwrap();
    assert_eq!(c.upstreams[0].endpoint, "http://127.0.0.1:11434/v1");
    assert!(c.upstreams[0].api_key.is_none(), "an empty key means none");
}

#[test]
fn reports_every_problem_with_its_path() {
    let errs = errors(
        r#"
        [server]
        listen = "nowhere"
        [timeouts]
        idle = "soon"
        [[upstreams]]
        name = "a"
        endpoint = "ftp://x"
        [[upstreams]]
        name = "a"
        endpoint = "http://x"
        kind = "grpc"
        [[models]]
        name = "m"
        targets = [{ upstream = "a", model = "x" }, { upstream = "b", model = "y" }, { upstream = "a" }]
        [[models]]
        name = "m"
        targets = []
        "#,
    );
    let expected = [
        "server.listen: \"nowhere\" is not an address",
        "timeouts.idle: \"soon\" is not a duration",
        "upstreams[0].endpoint: \"ftp://x\" must be an http:// or https:// URL",
        "upstreams[1].name: upstream \"a\" is defined twice",
        "upstreams[1].kind: unknown kind \"grpc\"; supported: openai, worker, azure-openai, bedrock, vertex, gemini",
        "models[0].targets[1].upstream: unknown upstream \"b\"; defined upstreams: [a, a]",
        "models[0].targets[2].model: is required",
        "models[1].name: model \"m\" is defined twice",
        "models[1].targets: needs at least one target",
    ];
    for want in expected {
        assert!(errs.iter().any(|e| e.starts_with(want)), "missing {want:?} in {errs:#?}");
    }
    assert_eq!(errs.len(), expected.len(), "{errs:#?}");
}

#[test]
fn unknown_fields_are_rejected_with_their_path() {
    let errs = errors("[[upstreams]]\nname = \"a\"\nendpoint = \"http://x\"\nendpont = \"http://y\"");
    assert_eq!(errs.len(), 1);
    assert!(
        errs[0].starts_with(
            "upstreams[0].endpont: unknown field `endpont`, expected one of `name`, `kind`, `endpoint`, `api_key`, `headers`, `timeouts`"
        ),
        "{errs:?}"
    );
}

#[test]
fn keys_are_checked_and_stored_hashed() {
    let errs = errors(
        r#"
        [[keys]]
        name = "a"
        team = "t"
        key = "short"
        [[keys]]
        name = "b"
        team = "t"
        key_sha256 = "zz"
        [[keys]]
        name = "c"
        team = "t"
        "#,
    );
    assert!(errs.iter().any(|e| e.starts_with("keys[0].key: is too short")), "{errs:?}");
    assert!(errs.iter().any(|e| e.starts_with("keys[1].key_sha256: must be 64 hex digits")), "{errs:?}");
    assert!(errs.iter().any(|e| e.starts_with("keys[2]: needs exactly one of")), "{errs:?}");

    let c = load_str(
        "[[keys]]\nname = \"a\"\nteam = \"t\"\nkey = \"0123456789abcdef\"",
        &MapEnv::default(),
        Path::new("."),
    )
    .unwrap();
    assert_eq!(hex::encode(c.keys[0].sha256), "9f9f5111f7b27a781f1f1ddde5ebc2dd2b796bfc7365c9c28b548e564176929f");
    assert!(!format!("{:?}", c.keys[0]).contains("0123456789abcdef"));
}

#[test]
fn serving_without_keys_is_allowed_only_on_loopback() {
    let errs = errors("[server]\nlisten = \"0.0.0.0:8080\"");
    assert_eq!(errs.len(), 1);
    assert!(errs[0].starts_with("keys: no API keys are configured"), "{errs:?}");
    assert!(errors("[server]\nlisten = \"[::1]:8080\"").is_empty());
}

#[test]
fn syntax_errors_say_where() {
    let e = load_str("[server\nlisten = 1", &MapEnv::default(), Path::new(".")).unwrap_err();
    assert!(matches!(e, ConfigError::Syntax(_)));
    assert!(e.to_string().contains("line 1"), "{e}");
}

#[test]
fn plugin_chains_are_checked() {
    let errs = errors(
        r#"
        chain = ["a", "ghost"]
        [[upstreams]]
        name = "u"
        endpoint = "http://x"
        [[models]]
        name = "m"
        targets = [{ upstream = "u", model = "x" }]
        plugins = ["a", "a"]
        [[plugins]]
        name = "a"
        source = "a.wasm"
        on_error = "sometimes"
        deadline = "0s"
        memory = "12 parsecs"
        [[plugins]]
        name = "b"
        source = "b.so"
        memory = "512MiB"
        "#,
    );
    let expected = [
        "plugins[0].on_error: \"sometimes\" is not \"open\" or \"closed\"",
        "plugins[0].deadline: must be longer than zero",
        "plugins[0].memory: unknown unit",
        "plugins[1].source: \"b.so\" is neither `builtin:NAME` nor a path to a `.wasm` component",
        // More than an instance can be given is refused, not silently cut to what it can.
        "plugins[1].memory: 536870912 bytes is outside 64KiB..=256MiB",
        "chain[1]: unknown plugin \"ghost\"; defined plugins: [a, b]",
        "models[0].plugins[1]: plugin \"a\" is listed twice",
    ];
    for want in expected {
        assert!(errs.iter().any(|e| e.starts_with(want)), "missing {want:?} in {errs:#?}");
    }
    assert_eq!(errs.len(), expected.len(), "{errs:#?}");
}

#[test]
fn plugins_get_defaults_and_their_config_as_json() {
    let c = load_str(
        "[[plugins]]\nname = \"p\"\nsource = \"p.wasm\"\nconfig = { limit = 5, names = [\"a\"] }\n[[plugins]]\nname = \"q\"\nsource = \"builtin:router\"\nmemory = \"1MiB\"",
        &MapEnv::default(),
        Path::new("/etc/weir"),
    )
    .unwrap();
    let p = &c.plugins[0];
    assert_eq!(p.source, PluginSource::File("/etc/weir/p.wasm".into()));
    assert_eq!((p.on_error, p.instances, p.memory), (OnError::Closed, InstanceMode::Pooled, 16 << 20));
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&p.config_json).unwrap(),
        serde_json::json!({"limit": 5, "names": ["a"]})
    );
    assert_eq!(c.plugins[1].source, PluginSource::Builtin("router".into()));
    assert_eq!(c.plugins[1].memory, 1 << 20);
    assert_eq!(c.chain, vec![0, 1], "without `chain`, every plugin in file order");
}

#[test]
fn worker_upstreams_take_an_endpoint_or_a_model() {
    let text = r#"
        [[upstreams]]
        name = "local"
        kind = "worker"
        model = "models/minilm"
        [[upstreams]]
        name = "remote"
        kind = "worker"
        endpoint = "http://10.0.0.5:8090/v1"
        [[models]]
        name = "m"
        targets = [{ upstream = "local", model = "minilm" }, { upstream = "remote", model = "minilm" }]
    "#;
    let c = load_str(text, &MapEnv::default(), Path::new("/etc/weir")).unwrap();
    let local = c.upstreams[0].local_worker.as_ref().unwrap();
    assert_eq!((local.model.as_str(), local.device.as_str()), ("/etc/weir/models/minilm", "auto"));
    assert!(c.upstreams[1].local_worker.is_none());
    assert_eq!(c.upstreams[1].endpoint, "http://10.0.0.5:8090/v1");

    let errs = errors(
        r#"
        [[upstreams]]
        name = "a"
        kind = "worker"
        [[upstreams]]
        name = "b"
        kind = "worker"
        model = "x"
        endpoint = "http://x"
        [[upstreams]]
        name = "c"
        kind = "openai"
        endpoint = "http://x"
        model = "x"
        [[upstreams]]
        name = "d"
        kind = "worker"
        model = "python:pkg/model"
        device = "tpu"
        [[models]]
        name = "m"
        targets = [{ upstream = "a" }]
        "#,
    );
    for (path, fragment) in [
        ("upstreams[0].endpoint", "a model to serve"),
        ("upstreams[1].model", "not both"),
        ("upstreams[2].model", "only kind = \"worker\""),
        ("upstreams[3].device", "auto, cpu or cuda:N"),
    ] {
        assert!(errs.iter().any(|e| e.starts_with(path) && e.contains(fragment)), "{path}: {errs:?}");
    }
}

#[test]
fn cloud_providers_are_validated_with_their_paths() {
    let errs = errors(
        r#"
        [[upstreams]]
        name = "b"
        kind = "bedrock"
        access_key_id = "AKID"
        project = "p"
        [[upstreams]]
        name = "v"
        kind = "vertex"
        location = "us-central1"
        [[upstreams]]
        name = "a"
        kind = "azure-openai"
        endpoint = "https://r.openai.azure.com"
        [[upstreams]]
        name = "g"
        kind = "gemini"
        [[upstreams]]
        name = "o"
        kind = "openai"
        [[models]]
        name = "m"
        targets = [{ upstream = "b", model = "x" }]
        "#,
    );
    let expected = [
        "upstreams[0].project: applies only to kind = \"vertex\"",
        "upstreams[0].region: is required",
        "upstreams[0].secret_access_key: is required",
        "upstreams[1].project: is required",
        "upstreams[2].api_key: is required (or tenant_id, client_id and client_secret for Entra ID)",
        "upstreams[3].api_key: is required",
        "upstreams[4].endpoint: is required for this kind",
    ];
    for want in expected {
        assert!(errs.iter().any(|e| e.starts_with(want)), "missing {want:?} in {errs:#?}");
    }
    assert_eq!(errs.len(), expected.len(), "{errs:#?}");
}

#[test]
fn cloud_providers_get_their_default_endpoints_and_credentials() {
    use weir_config::{AwsCredentials, AzureAuth, Provider};
    let c = load_str(
        r#"
        [[upstreams]]
        name = "b"
        kind = "bedrock"
        region = "eu-west-1"
        api_key = "bedrock-key"
        [[upstreams]]
        name = "v"
        kind = "vertex"
        project = "p"
        location = "global"
        credentials_file = "sa.json"
        [[upstreams]]
        name = "a"
        kind = "azure-openai"
        endpoint = "https://r.openai.azure.com/"
        tenant_id = "t"
        client_id = "c"
        client_secret = "s"
        api_version = "v1"
        [[models]]
        name = "m"
        targets = [{ upstream = "b", model = "x" }]
        "#,
        &MapEnv::default(),
        Path::new("/etc/weir"),
    )
    .unwrap();
    assert_eq!(c.upstreams[0].endpoint, "https://bedrock-runtime.eu-west-1.amazonaws.com");
    assert!(matches!(&c.upstreams[0].provider, Provider::Aws(b) if matches!(b.credentials, AwsCredentials::ApiKey(_))));
    assert_eq!(c.upstreams[1].endpoint, "https://aiplatform.googleapis.com");
    let chain = load_str(
        "[[upstreams]]\nname = \"b\"\nkind = \"bedrock\"\nregion = \"us-east-1\"\nprofile = \"prod\"\n",
        &MapEnv::default(),
        Path::new("/etc/weir"),
    )
    .unwrap();
    assert!(matches!(
        &chain.upstreams[0].provider,
        Provider::Aws(b) if matches!(&b.credentials, AwsCredentials::Chain { profile: Some(p), credentials_file: None } if p == "prod")
    ));
    let errs =
        errors("[[upstreams]]\nname = \"b\"\nkind = \"bedrock\"\nregion = \"r\"\napi_key = \"k\"\nprofile = \"p\"\n");
    assert_eq!(
        errs,
        ["upstreams[0].profile: applies only to the AWS credential chain (without api_key or access_key_id)"]
    );
    assert!(
        matches!(&c.upstreams[1].provider, Provider::Vertex(v) if v.credentials_file.as_deref() == Some(Path::new("/etc/weir/sa.json")))
    );
    assert_eq!(c.upstreams[2].endpoint, "https://r.openai.azure.com");
    let Provider::Azure(azure) = &c.upstreams[2].provider else { panic!("azure") };
    assert!(azure.api_version.is_none(), "\"v1\" is the /openai/v1 surface");
    assert!(
        matches!(&azure.auth, AzureAuth::Entra { token_endpoint, .. } if token_endpoint == "https://login.microsoftonline.com/t/oauth2/v2.0/token")
    );
}

/// The compiled-plugin cache is an absolute directory (wasmtime turns its cache off otherwise): by
/// default the user's cache directory, found through the injected environment; a configured one
/// resolves against the config file's folder like every other path.
#[test]
#[cfg(all(unix, not(target_os = "macos")))]
fn the_plugin_cache_is_absolute_and_in_the_users_cache_directory() {
    let cache = |pairs: &[(&str, &str)], text: &str, base: &str| {
        let env = MapEnv(pairs.iter().map(|&(k, v)| (k.to_owned(), v.to_owned())).collect());
        load_str(text, &env, Path::new(base)).expect("valid").state.plugin_cache
    };
    let cwd = std::env::current_dir().expect("a working directory");
    let home = [("HOME", "/home/ada")];
    assert_eq!(cache(&home, "", "."), Path::new("/home/ada/.cache/weir/plugins"));
    assert_eq!(
        cache(&[("HOME", "/home/ada"), ("XDG_CACHE_HOME", "/var/cache/ada")], "", "."),
        Path::new("/var/cache/ada/weir/plugins")
    );
    // The XDG spec says to ignore a relative XDG_CACHE_HOME.
    assert_eq!(
        cache(&[("HOME", "/home/ada"), ("XDG_CACHE_HOME", "cache")], "", "."),
        Path::new("/home/ada/.cache/weir/plugins")
    );
    // No home at all (a bare service account): next to the config, made absolute.
    assert_eq!(cache(&[], "", "/etc/weir"), Path::new("/etc/weir/.weir-cache"));
    assert_eq!(cache(&[], "", "."), cwd.join(".weir-cache"));
    // Configured: relative to the config file's folder, whatever the user's cache directory is.
    let configured = "[state]\nplugin_cache = \"compiled\"\n";
    assert_eq!(cache(&home, configured, "/etc/weir"), Path::new("/etc/weir/compiled"));
    assert_eq!(cache(&home, configured, "conf"), cwd.join("conf/compiled"));
    assert_eq!(cache(&home, "[state]\nplugin_cache = \"/srv/weir\"\n", "/etc/weir"), Path::new("/srv/weir"));
    assert_eq!(
        cache(&[("WEIR_CACHE", "/tmp/w")], "[state]\nplugin_cache = \"${WEIR_CACHE}\"\n", "/etc/weir"),
        Path::new("/tmp/w")
    );
}

#[test]
fn retry_first_token_and_failover_are_set_globally_and_per_model() {
    use std::time::Duration;
    use weir_config::{MidStream, Prefill};
    let c = load_str(
        r#"
        [retry]
        same_target = 2
        retry_after_max = "30s"
        [timeouts]
        first_token = "20s"
        [failover]
        mid_stream = "continue"
        [[upstreams]]
        name = "vllm"
        endpoint = "http://x"
        prefill = "continue-final-message"
        [[upstreams]]
        name = "openai"
        endpoint = "http://y"
        timeouts = { first_token = "5s" }
        [[upstreams]]
        name = "bedrock"
        kind = "bedrock"
        region = "us-east-1"
        [[models]]
        name = "defaults"
        targets = [{ upstream = "vllm", model = "m", context_window = 8192 }]
        [[models]]
        name = "own"
        targets = [{ upstream = "openai", model = "m" }, { upstream = "vllm", model = "m", context_window = 8192 }]
        retry = { same_target = 0, max_attempts = 4 }
        timeouts = { first_token = "2s" }
        failover = { mid_stream = "off", max_delay = "3s" }
        "#,
        &MapEnv::default(),
        Path::new("."),
    )
    .unwrap();
    let (defaults, own) = (&c.models[0], &c.models[1]);
    assert_eq!((defaults.retry.same_target, defaults.retry.max_attempts), (2, 3));
    assert_eq!(defaults.retry.retry_after_max, Duration::from_secs(30));
    assert_eq!((own.retry.same_target, own.retry.max_attempts), (0, 4), "overridden field by field");
    assert_eq!(own.retry.retry_after_max, Duration::from_secs(30));
    assert_eq!(defaults.first_token, None, "a model without its own uses its upstreams'");
    assert_eq!(own.first_token, Some(Duration::from_secs(2)));
    assert_eq!(c.upstreams[0].timeouts.first_token, Some(Duration::from_secs(20)));
    assert_eq!(c.upstreams[1].timeouts.first_token, Some(Duration::from_secs(5)));
    assert_eq!(defaults.failover.mid_stream, MidStream::Continue);
    assert_eq!((own.failover.mid_stream, own.failover.max_delay), (MidStream::Off, Duration::from_secs(3)));
    assert_eq!(own.failover.max_attempts, 2);
    assert_eq!(defaults.targets[0].context_window, Some(8192));
    let prefills: Vec<Prefill> = c.upstreams.iter().map(|u| u.prefill).collect();
    assert_eq!(prefills, [Prefill::ContinueFinalMessage, Prefill::None, Prefill::Assistant]);

    let plain = load_str("", &MapEnv::default(), Path::new(".")).unwrap();
    assert_eq!((plain.retry.same_target, plain.retry.retry_after_max), (1, Duration::from_secs(10)));
    assert_eq!((plain.failover.mid_stream, plain.failover.max_attempts), (MidStream::Off, 2));
}

#[test]
fn retry_failover_and_context_mistakes_name_their_field() {
    let errs = errors(
        r#"
        [retry]
        same_target = -1
        [failover]
        mid_stream = "resume"
        [[upstreams]]
        name = "u"
        endpoint = "http://x"
        prefill = "maybe"
        [[models]]
        name = "m"
        targets = [{ upstream = "u", model = "x", context_window = 0 }, { upstream = "u", model = "y", context_window = 10 }]
        timeouts = { first_token = "never" }
        failover = { max_attempts = 0 }
        [[models]]
        name = "n"
        targets = [{ upstream = "u", model = "y", context_window = 20 }]
        "#,
    );
    let expected = [
        "retry.same_target: must be between 0 and 9, got -1",
        "failover.mid_stream: \"resume\" is not \"off\" or \"continue\"",
        "upstreams[0].prefill: \"maybe\" is not one of none, assistant, continue-final-message, prefix",
        "models[0].targets[0].context_window: must be a positive number of tokens, got 0",
        "models[0].timeouts.first_token: \"never\" is not a duration",
        "models[0].failover.max_attempts: must be between 1 and 10, got 0",
        "models[1].targets[0].context_window: 20 differs from the 10 given for the same target at models[0].targets[1].context_window",
    ];
    for want in expected {
        assert!(errs.iter().any(|e| e.starts_with(want)), "missing {want:?} in {errs:#?}");
    }
    assert_eq!(errs.len(), expected.len(), "{errs:#?}");
    let errs = errors("[[models]]\nname = \"m\"\ntargets = []\ntimeouts = { idle = \"1s\" }");
    assert!(errs.iter().any(|e| e.contains("unknown field `idle`, expected `first_token`")), "{errs:?}");
}

#[test]
fn the_redis_backend_is_checked_and_takes_its_secrets_from_the_environment() {
    let base = "[[upstreams]]\nname = \"u\"\nendpoint = \"http://x\"\n[[models]]\nname = \"m\"\ntargets = [{ upstream = \"u\", model = \"x\" }]\n";
    let text = format!(
        "{base}[state]\nbackend = \"redis\"\n[state.redis]\nurl = \"rediss://cache:6380/2\"\nusername = \"weir\"\npassword = \"${{REDIS_PASSWORD}}\"\non_unavailable = \"fail\"\n"
    );
    let env = MapEnv::from_pairs([("REDIS_PASSWORD", "s3cret")]);
    let config = load_str(&text, &env, Path::new("/etc/weir")).unwrap();
    let weir_config::Backend::Redis(redis) = &config.state.backend else { panic!("not redis") };
    assert_eq!(redis.topology, weir_config::RedisTopology::Standalone { url: "rediss://cache:6380/2".into() });
    assert_eq!(
        (redis.username.as_deref(), redis.password.as_ref().map(|p| p.expose())),
        (Some("weir"), Some("s3cret"))
    );
    assert!(!format!("{redis:?}").contains("s3cret"), "the password never prints");
    assert_eq!(redis.on_unavailable, weir_config::OnUnavailable::Fail);
    assert_eq!((redis.key_prefix.as_str(), redis.timeout), ("weir:", std::time::Duration::from_millis(20)));
    assert_eq!(redis.hold_ttl, std::time::Duration::from_secs(660), "the longest request plus a minute");
    assert_eq!(config.state.ledger_fsync, weir_config::LedgerFsync::Every(std::time::Duration::from_secs(1)));

    for (state, expected) in [
        ("backend = \"redis\"\n", "state.redis: backend = \"redis\" needs a [state.redis] table"),
        ("backend = \"etcd\"\n", "state.backend: \"etcd\" is not"),
        ("[state.redis]\nurl = \"redis://x\"\n", "state.backend: [state.redis] is set but the backend is embedded"),
        ("backend = \"redis\"\n[state.redis]\nurl = \"http://x\"\n", "state.redis.url: \"http://x\" is not a redis://"),
        ("backend = \"redis\"\n[state.redis]\nmode = \"cluster\"\n", "state.redis.nodes: mode = \"cluster\" needs"),
        (
            "backend = \"redis\"\n[state.redis]\nmode = \"sentinel\"\nnodes = [\"redis://s:26379\"]\n",
            "state.redis.sentinel_master",
        ),
        ("backend = \"redis\"\n[state.redis]\nurl = \"redis://x\"\nkey_prefix = \"{a}\"\n", "state.redis.key_prefix"),
        (
            "backend = \"redis\"\n[state.redis]\nurl = \"redis://x\"\non_unavailable = \"wait\"\n",
            "state.redis.on_unavailable",
        ),
        (
            "backend = \"redis\"\n[state.redis]\nurl = \"redis://x\"\nhold_ttl = \"1m\"\n",
            "state.redis.hold_ttl: 60s is shorter",
        ),
        ("backend = \"redis\"\n[state.redis]\nurl = \"redis://x\"\ntimeout = \"soon\"\n", "state.redis.timeout"),
        ("ledger_fsync = \"never\"\n", "state.ledger_fsync"),
        ("backend = \"redis\"\n[state.redis]\nurl = \"redis://x\"\nport = 1\n", "unknown field `port`"),
    ] {
        let errs = errors(&format!("{base}[state]\n{state}"));
        assert!(errs.iter().any(|e| e.contains(expected)), "{state}: {errs:?}");
    }
}

#[test]
fn the_apis_settings_are_checked_with_their_paths() {
    let errs = errors(
        r#"
        [[upstreams]]
        name = "claude"
        kind = "anthropic"
        native_responses = true
        [[upstreams]]
        name = "deployments"
        kind = "azure-openai"
        endpoint = "https://r.openai.azure.com"
        api_version = "2024-10-21"
        api_key = "k"
        native_responses = true
        [[upstreams]]
        name = "bedrock"
        kind = "bedrock"
        region = "us-east-1"
        anthropic_version = "2023-06-01"
        [state]
        responses_max_bytes = "1KiB"
        responses_ttl = "forever"
        "#,
    );
    let expected = [
        "upstreams[0].native_responses: applies only to kind = \"openai | azure-openai\"",
        "upstreams[0].api_key: is required: the Anthropic API key",
        "upstreams[1].native_responses: applies only to the /openai/v1 surface",
        "upstreams[2].anthropic_version: applies only to kind = \"anthropic\"",
        "state.responses_max_bytes: 1024 bytes is too small",
        "state.responses_ttl: \"forever\" is not a duration",
    ];
    for want in expected {
        assert!(errs.iter().any(|e| e.starts_with(want)), "missing {want:?} in {errs:#?}");
    }
    assert_eq!(errs.len(), expected.len(), "{errs:#?}");
}

#[test]
fn the_apis_settings_have_their_defaults() {
    let config = load_str(
        r#"
        [[upstreams]]
        name = "claude"
        kind = "anthropic"
        api_key = "sk-ant"
        [[upstreams]]
        name = "openai"
        endpoint = "https://api.openai.com/v1"
        "#,
        &MapEnv::default(),
        Path::new("/etc/weir"),
    )
    .unwrap();
    assert_eq!(config.upstreams[0].endpoint, "https://api.anthropic.com");
    assert!(matches!(&config.upstreams[0].provider, weir_config::Provider::Anthropic(a) if a.version == "2023-06-01"));
    assert!(!config.upstreams[1].native_responses, "Responses are translated unless an upstream says it speaks them");
    assert_eq!(config.state.responses, Path::new("/etc/weir/weir-responses.jsonl"));
    assert_eq!(config.state.responses_max_bytes, 256 << 20);
    assert_eq!(config.state.responses_ttl, std::time::Duration::from_secs(30 * 86_400));
}
