//! The stable surface to build on: [`Weir`], a gateway inside your own process (`weir::embed::Weir`;
//! not re-exported at the crate root, which this module builds on).
//!
//! Build one from a config file ([`Weir::from_file`]), a TOML string ([`Weir::from_toml`]), code
//! ([`Weir::builder`], for the common cases), the embedded default configuration
//! ([`Weir::from_default_config`]) or an already loaded [`weir_config::Config`]
//! ([`Weir::from_config`]); then hand it requests with [`Weir::handle`] (no
//! socket), serve it on listeners with [`Weir::serve`], [`Weir::reload`] it, and
//! [`Weir::shutdown`] it. Every request takes the server's own path (`pipeline::handle`): keys,
//! plugins, routing, retries and streams behave the same in process as over HTTP.
//!
//! A module of the `weir` crate rather than a façade crate of its own: the binary, the tests and
//! the benches are built on these same types in the same crate, so there is one version of the
//! pipeline to keep and no re-export layer to keep in step with it. The other public modules
//! (`weir::pipeline`, `weir::state`, …) are the gateway's internals, public for its tests and
//! benches; they change without notice. Build on this module.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use http_body_util::{BodyExt, Empty, Full};
//!
//! // One OpenAI-compatible upstream (nothing listens there: these requests never reach it) and one key.
//! let weir = weir::embed::Weir::from_toml(
//!     r#"
//!     [[upstreams]]
//!     name = "openai"
//!     endpoint = "http://127.0.0.1:9/v1"
//!
//!     [[models]]
//!     name = "gpt-4o-mini"
//!     targets = [{ upstream = "openai", model = "gpt-4o-mini" }]
//!
//!     [[keys]]
//!     name = "app"
//!     team = "web"
//!     key = "${APP_KEY:-app-key-0123456789abcdef}"
//!     "#,
//! )
//! .await?;
//!
//! let health = weir.handle(http::Request::get("/healthz").body(Empty::<bytes::Bytes>::new())?).await;
//! assert_eq!(health.status(), 200);
//!
//! // No key: a 401 in OpenAI's error shape, as the server would answer.
//! let chat = http::Request::post("/v1/chat/completions")
//!     .header("content-type", "application/json")
//!     .body(Full::new(bytes::Bytes::from(r#"{"model":"gpt-4o-mini","messages":[]}"#)))?;
//! let refused = weir.handle(chat).await;
//! assert_eq!(refused.status(), 401);
//! let body = refused.into_body().collect().await?.to_bytes();
//! let error: serde_json::Value = serde_json::from_slice(&body)?;
//! assert_eq!(error["error"]["code"], "missing_api_key");
//!
//! // A model that is not configured: a 404 naming it.
//! let unknown = http::Request::post("/v1/chat/completions")
//!     .header("authorization", "Bearer app-key-0123456789abcdef")
//!     .body(Full::new(bytes::Bytes::from(r#"{"model":"nope","messages":[{"role":"user","content":"hi"}]}"#)))?;
//! let missing = weir.handle(unknown).await;
//! assert_eq!(missing.status(), 404);
//! let error: serde_json::Value = serde_json::from_slice(&missing.into_body().collect().await?.to_bytes())?;
//! assert_eq!(error["error"]["code"], "model_not_found");
//!
//! assert!(weir.shutdown().await, "nothing was in flight");
//! # Ok(())
//! # }
//! ```

mod builder;

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use http::{Request, Response};
use http_body_util::BodyExt;
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use weir_config::{Config, ProcessEnv};

use crate::body::{Body, RequestBody};
use crate::{DEFAULT_CONFIG, Gateway, LoadError, pipeline, server};

pub use builder::{Budget, Builder, Period, RateLimit, Target, Upstream};

/// An embedded Weir gateway. Cheap to clone: clones share one gateway (its state, plugins, metrics
/// and listeners). Must be used inside a Tokio runtime with the time and I/O drivers enabled.
#[derive(Debug, Clone)]
pub struct Weir {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    gateway: Arc<Gateway>,
    /// `handle` calls not yet answered, and streamed answers not yet ended or dropped.
    in_flight: Arc<InFlight>,
    /// Set to `true` by [`Weir::shutdown`]; every listener's accept loop waits on it.
    stopping: watch::Sender<bool>,
    listeners: Mutex<Vec<JoinHandle<io::Result<()>>>>,
}

/// A listener started by [`Weir::serve`]. It serves until [`Weir::shutdown`], or until every clone
/// of its [`Weir`] is dropped (then it drains the same way); dropping this handle does not stop it.
#[derive(Debug, Clone, Copy)]
pub struct Served {
    addr: SocketAddr,
}

impl Served {
    /// The address it listens on: the port the system chose when the listener was bound to port 0.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR`, the base URL of the gateway's routes (OpenAI clients take `http://ADDR/v1`).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Weir {
    /// Reads the configuration file at `path`, with `${VAR}` and `${VAR:-default}` taken from the
    /// process environment and relative paths resolved against the file's folder, and starts a
    /// gateway on it. [`Weir::reload`] re-reads this file. An invalid file is a
    /// [`LoadError::Config`] listing every problem with its field path.
    pub async fn from_file(path: impl AsRef<Path>) -> Result<Self, LoadError> {
        Self::from_config(weir_config::load_file(path.as_ref(), &ProcessEnv)?).await
    }

    /// Starts a gateway on configuration text (the format of `weir.toml`), with `${VAR}`
    /// substitution from the process environment and relative paths (the ledger, plugin files)
    /// resolved against the current directory. There is no file to reload from: [`Weir::reload`]
    /// answers [`LoadError::NoConfigFile`]; use [`Weir::reload_config`].
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let error = weir::embed::Weir::from_toml("[[upstreams]]\nname = \"a\"\nendpoint = \"ftp://x\"").await.unwrap_err();
    /// assert!(error.to_string().contains("upstreams[0].endpoint"), "{error}");
    /// # }
    /// ```
    pub async fn from_toml(text: &str) -> Result<Self, LoadError> {
        Self::from_config(weir_config::load_str(text, &ProcessEnv, Path::new("."))?).await
    }

    /// Starts a gateway on the configuration `weir serve` uses without `--config`
    /// ([`DEFAULT_CONFIG`]): `weir-tiny-chat` and `all-minilm-l6-v2` answered by in-process workers,
    /// every other model sent to `$WEIR_UPSTREAM` (default `http://127.0.0.1:11434/v1`), the
    /// built-in policies in their chain, and the ledger in `./weir-ledger.jsonl`.
    ///
    /// ```no_run
    /// # #[tokio::main]
    /// # async fn main() -> Result<(), weir::LoadError> {
    /// let weir = weir::embed::Weir::from_default_config().await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn from_default_config() -> Result<Self, LoadError> {
        Self::from_toml(DEFAULT_CONFIG).await
    }

    /// Starts a gateway on a configuration already loaded (say with [`weir_config::load_str`] and
    /// an environment of your own). Plugins are compiled and initialised and local workers started
    /// here, before this returns; a plugin that does not load is an error, as at `weir serve`.
    pub async fn from_config(config: Config) -> Result<Self, LoadError> {
        let gateway = Gateway::new(config, Box::new(ProcessEnv)).await?;
        let (stopping, _) = watch::channel(false);
        Ok(Self {
            inner: Arc::new(Inner { gateway, in_flight: Arc::default(), stopping, listeners: Mutex::new(Vec::new()) }),
        })
    }

    /// Answers one request in process, with no socket: the path and method choose the API
    /// (`/v1/chat/completions`, `/v1/embeddings`, `/v1/messages`, `/v1/responses`, `/v1/models`,
    /// `/healthz`, `/metrics` …), the `Authorization` header the key, exactly as over HTTP. Never
    /// fails: errors are responses in the API's own error shape with their status.
    ///
    /// A streamed answer's body yields each event as the upstream sends it; dropping the body
    /// before its end cancels the upstream request and is accounted as a client disconnect.
    /// [`Weir::shutdown`] waits for a stream until its last frame is read or its body dropped; a
    /// whole answer (a body of known length) is done once this returns.
    pub async fn handle<B: RequestBody>(&self, request: Request<B>) -> Response<Body> {
        let entered = self.inner.in_flight.enter();
        let response = match pipeline::handle(self.inner.gateway.clone(), request).await {
            Ok(response) => response,
            Err(never) => match never {},
        };
        // A body of known length is already whole in memory: nothing left to drain. A stream is
        // in flight until it ends or is dropped, so that `shutdown` waits for it.
        if http_body::Body::size_hint(response.body()).exact().is_some() {
            return response;
        }
        response.map(|body| Streaming { body, entered: Some(entered) }.boxed_unsync())
    }

    /// [`Weir::handle`] for a caller the application has already authenticated: the request is
    /// served as the key `key_name` of `team` whatever its headers say (with no API key needed),
    /// so per-key and per-team limits, budgets, caches and the ledger apply to it as to that
    /// key's requests. Only an application embedding Weir can do this: over HTTP every request
    /// needs its key.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use http_body_util::Empty;
    ///
    /// let weir = weir::embed::Weir::from_toml(
    ///     "[[keys]]\nname = \"app\"\nteam = \"web\"\nkey = \"app-key-0123456789abcdef\"",
    /// )
    /// .await?;
    /// let models = || http::Request::get("/v1/models").body(Empty::<bytes::Bytes>::new());
    /// assert_eq!(weir.handle(models()?).await.status(), 401, "no key");
    /// assert_eq!(weir.handle_as("app", "web", models()?).await.status(), 200, "vouched for");
    /// # Ok(())
    /// # }
    /// ```
    pub async fn handle_as<B: RequestBody>(
        &self,
        key_name: &str,
        team: &str,
        mut request: Request<B>,
    ) -> Response<Body> {
        let principal = crate::auth::Principal { key_name: key_name.to_owned(), team: team.to_owned() };
        request.extensions_mut().insert(crate::auth::Embedded(Arc::new(principal)));
        self.handle(request).await
    }

    /// Serves the gateway on `listener` (plain HTTP/1.1 and HTTP/2, or TLS when `[server.tls]`
    /// is set) from a task of its own, with the connection limits and timeouts of `[server]`, as
    /// `weir serve` does; returns once it accepts. Call it again for more listeners.
    pub fn serve(&self, listener: TcpListener) -> io::Result<Served> {
        let server = server::Server::new(listener, self.inner.gateway.clone())?;
        let addr = server.local_addr()?;
        let mut stopping = self.inner.stopping.subscribe();
        let task = tokio::spawn(async move {
            let result = server
                .run(async move {
                    // An error means every `Weir` is gone: stop as on shutdown.
                    let _ = stopping.wait_for(|stop| *stop).await;
                })
                .await;
            if let Err(error) = &result {
                tracing::error!(%addr, %error, "the listener stopped with an error");
            }
            result
        });
        self.inner.listeners.lock().unwrap_or_else(|e| e.into_inner()).push(task);
        Ok(Served { addr })
    }

    /// Re-reads the configuration file (and the plugin files it names) and swaps the new gateway
    /// in; requests in flight finish on the configuration they started with. An invalid file keeps
    /// the current configuration serving and returns why.
    pub async fn reload(&self) -> Result<(), LoadError> {
        self.inner.gateway.reload().await
    }

    /// Swaps in a gateway built from `config`, as [`Weir::reload`] does from the file. Listener
    /// settings (`[server]` address, TLS, timeouts) keep the values they started with.
    pub async fn reload_config(&self, config: Config) -> Result<(), LoadError> {
        self.inner.gateway.reload_with(config).await
    }

    /// Shuts down gracefully: model requests arriving from now on are refused with a 503
    /// `shutting_down` error (and `/readyz` answers 503), every listener stops accepting and drains
    /// its connections, and this waits, up to `server.shutdown_grace`, for the requests in flight
    /// to end: `handle` calls not yet answered, and streamed answers not yet read to their end or
    /// dropped. Returns whether everything ended within the grace period.
    pub async fn shutdown(&self) -> bool {
        let inner = &self.inner;
        inner.gateway.begin_drain();
        inner.stopping.send_replace(true);
        let grace = inner.gateway.current().config.server.shutdown_grace;
        let listeners = std::mem::take(&mut *inner.listeners.lock().unwrap_or_else(|e| e.into_inner()));
        // Each listener drains within the grace period on its own (`server::Server::run`).
        let (handled, served) = tokio::join!(
            tokio::time::timeout(grace, inner.in_flight.ended()),
            futures_util::future::join_all(listeners)
        );
        handled.is_ok() && served.iter().all(|joined| matches!(joined, Ok(Ok(()))))
    }

    /// The gateway's internals (its current configuration and state, for `weir serve`'s reload
    /// triggers and for tests). Not part of the stable surface.
    pub fn core(&self) -> &Arc<Gateway> {
        &self.inner.gateway
    }
}

pin_project_lite::pin_project! {
    /// A streamed response body of [`Weir::handle`], counted in flight until its end or its drop.
    struct Streaming {
        #[pin]
        body: Body,
        entered: Option<Entered>,
    }
}

impl http_body::Body for Streaming {
    type Data = bytes::Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let polled = this.body.poll_frame(cx);
        if let Poll::Ready(None) = polled {
            this.entered.take();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// A count of the `handle` calls and streams `shutdown` waits for, and a wake-up when it reaches zero.
#[derive(Debug, Default)]
struct InFlight {
    count: AtomicUsize,
    zero: Notify,
}

/// One `handle` call or stream in flight; dropping it ends it.
#[derive(Debug)]
struct Entered(Arc<InFlight>);

impl InFlight {
    fn enter(self: &Arc<Self>) -> Entered {
        self.count.fetch_add(1, Ordering::AcqRel);
        Entered(self.clone())
    }

    async fn ended(&self) {
        loop {
            // Registered before the count is read, so that a drop to zero in between still wakes it.
            let notified = self.zero.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.count.load(Ordering::Acquire) == 0 {
                return;
            }
            notified.await;
        }
    }
}

impl Drop for Entered {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.zero.notify_waiters();
        }
    }
}
