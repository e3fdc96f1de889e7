//! The `weir` command line: `weir serve`, `weir worker`, `weir config check`, `weir key …`.

use std::io::{IsTerminal, Read};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use rand::Rng;
use sha2::{Digest, Sha256};
use tracing_subscriber::EnvFilter;
use weir::Gateway;
use weir::embed::Weir;
use weir_config::{Config, LogFormat, ProcessEnv};

#[derive(Parser)]
#[command(name = "weir", version, about = "An embedded, WebAssembly-programmable AI gateway")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the gateway.
    Serve {
        /// The configuration file; without it, the embedded default (see config/examples/default.toml).
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Serve a local model (BERT embeddings, GPT-2 generation, MLP prediction) on the OpenAI API.
    Worker {
        /// A Hugging Face-format model directory (config.json, *.safetensors, tokenizer.json), or
        /// `python:PACKAGE/SUBDIR` for one shipped in an installed Python package.
        #[arg(long)]
        model: String,
        /// auto (CUDA when a GPU and driver are present, else the CPU), cpu, or cuda:N.
        #[arg(long, default_value = "auto")]
        device: weir::worker::Device,
        #[arg(long, default_value = "127.0.0.1:8090")]
        listen: std::net::SocketAddr,
        /// The model's name in responses and /v1/models (default: the directory's name).
        #[arg(long)]
        name: Option<String>,
    },
    /// Work with configuration files.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Work with API keys.
    Key {
        #[command(subcommand)]
        command: KeyCommand,
    },
    /// Work with policy plugins.
    Plugin {
        #[command(subcommand)]
        command: PluginCommand,
    },
    /// GET a URL (default: this machine's /healthz) and exit 0 on a 2xx answer: a container's
    /// health check, with no curl in the image.
    Probe {
        #[arg(default_value = "http://127.0.0.1:8080/healthz")]
        url: String,
        /// How long to wait for the answer.
        #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
    },
    /// Report spending from the ledger (or several replicas' ledgers, merged), by key, team, model
    /// and day (UTC).
    Spend {
        /// A ledger file; repeat it to merge several (one per replica). Without it, the one the
        /// configuration names.
        #[arg(long, conflicts_with = "config")]
        ledger: Vec<PathBuf>,
        /// The configuration whose `[state] ledger` to read (default: the embedded one).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// The columns to group by.
        #[arg(long, value_enum, value_delimiter = ',', default_values_t = [weir::spend::Group::Day, weir::spend::Group::Key, weir::spend::Group::Team, weir::spend::Group::Model])]
        by: Vec<weir::spend::Group>,
        /// The first day to include (YYYY-MM-DD, UTC).
        #[arg(long)]
        since: Option<String>,
        /// The first day to leave out (YYYY-MM-DD, UTC).
        #[arg(long)]
        until: Option<String>,
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum PluginCommand {
    /// Scaffold a plugin crate in ./NAME that builds with `cargo build --release`.
    New {
        name: String,
        /// Build against the weir-sdk at this path (Weir's `sdk/` folder, or an unpacked crate)
        /// instead of the published crate: written as a `[patch.crates-io]` section.
        #[arg(long)]
        sdk: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate a configuration file and print a summary, or every problem with its field path.
    Check { file: PathBuf },
}

#[derive(Subcommand)]
enum KeyCommand {
    /// Print the `key_sha256` of a key read from standard input.
    Hash,
    /// Make a new random key and print it with its `key_sha256`.
    New,
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // `{:#}` prints the chain of causes on one screen, without a backtrace: these are a
            // user's configuration or environment problems, not crashes.
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve { config } => serve(config.as_deref()),
        Command::Worker { model, device, listen, name } => worker(&model, device, listen, name.as_deref()),
        Command::Config { command: ConfigCommand::Check { file } } => {
            let config = load(Some(&file))?;
            let (upstreams, models, keys, plugins) =
                (config.upstreams.len(), config.models.len(), config.keys.len(), config.plugins.len());
            // Plugins are loaded too (read, compiled, `init`-ed with their config), so a plugin
            // that would stop `weir serve` stops the check.
            // A check touches nothing outside the config: the Redis settings are checked (URLs,
            // the CA file) without connecting, and the plugins load against embedded state, so no
            // ledger spool starts and nothing is written next to the ledger.
            let mut config = config;
            if let weir_config::Backend::Redis(redis) = &config.state.backend {
                weir::state::redis::check(redis)?;
                config.state.backend = weir_config::Backend::Embedded;
            }
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            runtime.block_on(Gateway::new(config, Box::new(ProcessEnv)))?;
            #[expect(clippy::print_stdout, reason = "the command's output")]
            {
                println!(
                    "{}: ok ({upstreams} upstreams, {models} models, {keys} keys, {plugins} plugins loaded)",
                    file.display()
                );
            }
            Ok(())
        }
        Command::Probe { url, timeout } => {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let status = runtime
                .block_on(async { tokio::time::timeout(timeout, probe(&url)).await })
                .map_err(|_| anyhow::anyhow!("{url}: no answer within {timeout:?}"))??;
            anyhow::ensure!(status.is_success(), "{url} answered {status}");
            Ok(())
        }
        Command::Spend { ledger, config, by, since, until, json } => {
            let paths = if ledger.is_empty() { vec![load(config.as_deref())?.state.ledger] } else { ledger };
            let mut entries = Vec::new();
            for path in &paths {
                entries.extend(
                    weir::state::ledger::Ledger::read(path)
                        .with_context(|| format!("cannot read the ledger {}", path.display()))?,
                );
            }
            let day = |d: Option<String>, default: u64| d.map_or(Ok(default), |d| weir::spend::parse_day(&d));
            let since = day(since, 0).map_err(anyhow::Error::msg)?;
            let until = day(until, u64::MAX).map_err(anyhow::Error::msg)?;
            let mut by = by;
            by.sort();
            by.dedup();
            let rows = weir::spend::report(&entries, &by, since, until);
            let out = if json { serde_json::to_string_pretty(&rows)? + "\n" } else { weir::spend::table(&rows, &by) };
            #[expect(clippy::print_stdout, reason = "the command's output")]
            {
                print!("{out}");
            }
            Ok(())
        }
        Command::Plugin { command: PluginCommand::New { name, sdk } } => {
            let sdk = sdk
                .map(|sdk| {
                    let found = sdk.join("Cargo.toml").is_file() && sdk.join("wit/weir.wit").is_file();
                    anyhow::ensure!(found, "no weir-sdk crate at {} (its Cargo.toml and wit/weir.wit)", sdk.display());
                    Ok(sdk.canonicalize()?)
                })
                .transpose()?;
            let dir = PathBuf::from(&name);
            weir::plugins::scaffold::scaffold(&dir, &name, sdk.as_deref())?;
            let from = sdk.map_or_else(
                || format!("weir-sdk {} from crates.io", weir::plugins::scaffold::SDK_VERSION),
                |sdk| format!("the weir-sdk at {}", sdk.display()),
            );
            #[expect(clippy::print_stdout, reason = "the command's output")]
            {
                println!("created {} (with {from}): cd {name} && cargo build --release", dir.display());
            }
            Ok(())
        }
        Command::Key { command } => {
            let key = match command {
                KeyCommand::Hash => {
                    let mut key = String::new();
                    std::io::stdin().read_to_string(&mut key)?;
                    key.trim().to_owned()
                }
                KeyCommand::New => {
                    let bytes: [u8; 24] = rand::rng().random();
                    format!("wk-{}", hex::encode(bytes))
                }
            };
            anyhow::ensure!(key.len() >= 16, "API keys need at least 16 characters");
            let digest = hex::encode(Sha256::digest(key.as_bytes()));
            #[expect(clippy::print_stdout, reason = "the command's output")]
            {
                println!("key        = {key}\nkey_sha256 = \"{digest}\"");
            }
            Ok(())
        }
    }
}

/// One plain-HTTP GET (a loopback health URL), by hand over hyper's client connection: the probe
/// needs no pool, TLS or redirects.
async fn probe(url: &str) -> anyhow::Result<http::StatusCode> {
    let uri: http::Uri = url.parse().with_context(|| format!("{url:?} is not a URL"))?;
    anyhow::ensure!(uri.scheme_str() == Some("http"), "{url}: only http:// URLs can be probed");
    let host = uri.host().context("the URL has no host")?;
    let stream = tokio::net::TcpStream::connect((host, uri.port_u16().unwrap_or(80)))
        .await
        .with_context(|| format!("cannot connect to {url}"))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let request =
        http::Request::get(path).header(http::header::HOST, host).body(http_body_util::Empty::<bytes::Bytes>::new())?;
    Ok(sender.send_request(request).await?.status())
}

fn load(file: Option<&Path>) -> anyhow::Result<Config> {
    let result = match file {
        Some(path) => weir_config::load_file(path, &ProcessEnv),
        None => weir_config::load_str(weir::DEFAULT_CONFIG, &ProcessEnv, Path::new(".")),
    };
    let name = file.map_or_else(|| "the default configuration".to_owned(), |p| p.display().to_string());
    result.with_context(|| format!("{name} is not valid"))
}

fn serve(file: Option<&Path>) -> anyhow::Result<()> {
    // An invalid config exits here, before any port is bound.
    let config = load(file)?;
    init_logging(&config);
    weir::server::raise_fd_limit();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let listen = config.server.listen;
    runtime.block_on(async move {
        // Plugins compile here, before any port is bound: a plugin that does not load stops the start.
        let weir = Weir::from_config(config).await?;
        let app = weir.core().current();
        if app.auth.is_open() {
            tracing::warn!(%listen, "no API keys configured: serving without authentication (allowed on loopback only)");
        }
        if file.is_none() {
            let upstream = &app.config.upstreams[0];
            tracing::info!(
                upstream = %upstream.endpoint,
                "using the embedded default configuration: weir-tiny-chat and all-minilm-l6-v2 are served locally, every other model goes to this upstream"
            );
        }
        drop(app);
        let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| format!("cannot listen on {listen}"))?;
        weir::reload::on_sighup(weir.core().clone());
        let _watcher = weir::reload::watch_files(weir.core().clone());
        weir.serve(listener)?;
        shutdown_signal().await;
        weir.shutdown().await;
        Ok(())
    })
}

fn worker(
    model: &str,
    device: weir::worker::Device,
    listen: std::net::SocketAddr,
    name: Option<&str>,
) -> anyhow::Result<()> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    // The model loads before the port is bound: a worker that listens can answer.
    let worker = weir::worker::Worker::load(model, device, name).map_err(|e| anyhow::anyhow!("{e}"))?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        let listener =
            tokio::net::TcpListener::bind(listen).await.with_context(|| format!("cannot listen on {listen}"))?;
        tracing::info!(%listen, model = %worker.name, device = %worker.device, "weir worker is serving");
        weir::worker::http::serve(listener, weir::worker::http::Slot::Ready(worker), shutdown_signal()).await?;
        Ok(())
    })
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!("SIGINT received"),
        () = term => tracing::info!("SIGTERM received"),
    }
}

fn init_logging(config: &Config) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&config.log.level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match config.log.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}
