//! Write [Weir](https://github.com/) policy plugins in Rust.
//!
//! A plugin is a WebAssembly component that the gateway calls at five points of a request's life:
//! before routing ([`Plugin::on_request`], which may also rewrite the request: [`rewrite`] and
//! [`edit`]), when an upstream's response headers arrive ([`Plugin::on_response_headers`]), when
//! a whole answer is ready to go out ([`Plugin::on_response`]: keep, replace or refuse it), at each
//! chunk of a streamed one ([`Plugin::on_stream_event`]), and when the request is over
//! ([`Plugin::on_complete`]). It
//! keeps no state of its own between requests: state lives in the host's [`kv`] store, [`quota`]
//! limiter and [`ledger`], so the gateway can pool, recycle and replace instances freely.
//!
//! A plugin is one trait impl and one macro call:
//!
//! ```ignore
//! use weir_sdk::{Decision, HookSet, Plugin, PluginInfo, Rejection, Request};
//!
//! /// Refuses requests for models whose name starts with a configured prefix.
//! #[derive(serde::Deserialize)]
//! struct DenyPrefix {
//!     prefix: String,
//! }
//!
//! impl Plugin for DenyPrefix {
//!     fn init(config: &str) -> Result<(Self, PluginInfo), String> {
//!         // The plugin's `config` table: `config = { prefix = "gpt-4" }`. A missing or mistyped
//!         // field is an error naming it, and the gateway refuses the config with it.
//!         let plugin: DenyPrefix = weir_sdk::config(config)?;
//!         Ok((plugin, PluginInfo::hooks(HookSet::ON_REQUEST)))
//!     }
//!
//!     fn on_request(&self, req: &Request) -> Decision {
//!         if req.info().model.starts_with(&self.prefix) {
//!             return Decision::Reject(Rejection {
//!                 status: 403,
//!                 code: "model_not_allowed".into(),
//!                 message: format!("models starting with {} are not allowed", self.prefix),
//!                 retry_after_ms: None,
//!             });
//!         }
//!         Decision::Continue
//!     }
//! }
//!
//! weir_sdk::export_plugin!(DenyPrefix);
//! ```
//!
//! Build it with `cargo build --target wasm32-wasip2 --release` (the crate is a `cdylib`) and point
//! the gateway's config at `target/wasm32-wasip2/release/<name>.wasm`. `weir plugin new NAME`
//! scaffolds such a crate. The contract is `wit/weir.wit` in this crate (`weir:plugin@0.3.0`;
//! `weir-sdk` 0.3.x builds components for `weir:plugin@0.3`); every type below comes from it.
//! Components built against the earlier 0.1.0 and 0.2.x keep loading: the host serves them all.
//!
//! What a plugin may use: Rust's standard library, `HashMap` included (WASI's clocks and random
//! numbers are there; `catalog::now_ms` and `catalog::random_u64` are the host's own). It has no
//! files, sockets, environment or arguments. What it prints goes to the gateway's log: stdout at
//! info, stderr at warn (a panic's message too, which the fault's warning line also carries), a
//! line at a time, within the plugin's log budget. The limits it meets are listed in the README's
//! "Limits a plugin meets".

#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "wit",
        world: "plugin",
        pub_export_macro: true,
        export_macro_name: "__export_world",
        default_bindings_module: "weir_sdk::bindings",
        generate_all,
    });
}

pub use bindings::weir::plugin::hooks::{
    AnswerAction, Attempt, Completion, Decision, EventAction, HookSet, LocalResponse, PluginInfo, Rejection,
    ResponseAction, Rewrite, StreamEvent,
};

pub mod edit;
pub use bindings::weir::plugin::request::Request;
pub use bindings::weir::plugin::types::{ApiKind, RequestInfo, Usage};
pub use bindings::weir::plugin::{catalog, kv, ledger, log, metrics, quota};

/// Reads the plugin's config table (the JSON text [`Plugin::init`] is given) into `T`. An error
/// names the field at fault (`limits.rpm: invalid type: string "ten", expected u32`), ready to be
/// returned from `init`, which makes the gateway refuse the config with it.
pub fn config<T: serde::de::DeserializeOwned>(json: &str) -> Result<T, String> {
    let mut reader = serde_json::Deserializer::from_str(json);
    serde_path_to_error::deserialize(&mut reader).map_err(|e| {
        let path = e.path().to_string();
        if path == "." { e.inner().to_string() } else { format!("{path}: {}", e.inner()) }
    })
}

/// Reads the request's JSON body (the plugin must declare [`PluginInfo::needing_body`]; without
/// it the body reads as empty, an error here).
pub fn body_json(req: &Request) -> Result<serde_json::Value, String> {
    serde_json::from_slice(&req.body()).map_err(|e| format!("the request body does not read as JSON: {e}"))
}

/// In `on_request`: makes `body` the request (`request.set-body`). The host validates it as the
/// request's API when the hook returns; an invalid one (or one naming another model, or turning
/// streaming on or off) is this plugin's fault, resolved by its `on_error`.
pub fn rewrite(req: &Request, body: &serde_json::Value) {
    // A `Value` always serializes.
    req.set_body(&serde_json::to_vec(body).unwrap_or_default());
}

/// What is left of the current call before it ends as a deadline fault: the less of what is left
/// of its deadline (the time it has run and waited on state calls) and of its wall limit (since
/// the hook was called). Zero once either is spent. For work a plugin can skip when time is short.
pub fn time_left() -> std::time::Duration {
    std::time::Duration::from_micros(catalog::time_left_us())
}

/// The most keys one `kv::get_many` or `kv::add_many` may name, and the most asks one
/// `quota::reserve_all` may make; more is a fault of the plugin.
pub const MAX_MANY: usize = 256;

/// A policy plugin. Only `init` is required; the hooks the plugin implements must be named in
/// [`PluginInfo::hooks`], and the host calls only those.
pub trait Plugin: Sized + 'static {
    /// Builds the plugin from its config table (as JSON text) once per instance, and says which
    /// hooks to call, which request headers it reads and whether it needs the raw body.
    fn init(config: &str) -> Result<(Self, PluginInfo), String>;

    /// Before routing: continue, route elsewhere, reject, or answer now.
    fn on_request(&self, _req: &Request) -> Decision {
        Decision::Continue
    }

    /// When an upstream's response headers arrive: keep the response or retry another target.
    fn on_response_headers(&self, _req: &Request, _status: u16) -> ResponseAction {
        ResponseAction::Continue
    }

    /// A whole (not streamed) answer before it goes out, in the canonical chat form (a
    /// `chat.completion`'s JSON, or the embeddings list) whatever the client's API: keep it,
    /// replace it (the host renders the replacement in the client's API; its `usage` stays the
    /// upstream's), or refuse it with an error. Declare [`HookSet::ON_RESPONSE`].
    fn on_response(&self, _req: &Request, _answer: Vec<u8>) -> AnswerAction {
        AnswerAction::Continue
    }

    /// Each event of a streamed answer with content, in order, before it goes out: pass it, rewrite
    /// the text held back and its own (a redaction), drop it, hold it back for a match that may
    /// span the next event (declare [`PluginInfo::holding_stream_bytes`]), or end the stream with
    /// an error. Declare [`HookSet::ON_STREAM_EVENT`].
    fn on_stream_event(&self, _req: &Request, _event: StreamEvent) -> EventAction {
        EventAction::Pass
    }

    /// After the response was sent, or the client went away: usage, timings, status.
    fn on_complete(&self, _req: &Request, _outcome: Completion) {}
}

impl PluginInfo {
    /// Info for a plugin that implements `hooks`, reads no headers and does not need the body.
    pub fn hooks(hooks: HookSet) -> Self {
        PluginInfo { hooks, read_headers: Vec::new(), needs_body: false, needs_response: false, stream_hold_bytes: 0 }
    }

    /// Declares request headers the plugin reads with [`Request::header`].
    pub fn reading_headers<I: IntoIterator<Item = S>, S: Into<String>>(mut self, names: I) -> Self {
        self.read_headers.extend(names.into_iter().map(Into::into));
        self
    }

    /// Declares that the plugin reads the raw body with [`Request::body`].
    pub fn needing_body(mut self) -> Self {
        self.needs_body = true;
        self
    }

    /// Declares how many bytes of events [`Plugin::on_stream_event`] may hold back at once (at most
    /// 64 KiB).
    pub fn holding_stream_bytes(mut self, bytes: u32) -> Self {
        self.stream_hold_bytes = bytes;
        self
    }

    /// Declares that the plugin reads the response with [`Request::response_body`] in `on_complete`.
    pub fn needing_response(mut self) -> Self {
        self.needs_response = true;
        self
    }
}

/// Exports a [`Plugin`] implementation as the component's entry points.
#[macro_export]
macro_rules! export_plugin {
    ($plugin:ty) => {
        const _: () = {
            struct __WeirGuest;

            ::std::thread_local! {
                static __WEIR_PLUGIN: ::std::cell::RefCell<::std::option::Option<$plugin>> =
                    const { ::std::cell::RefCell::new(::std::option::Option::None) };
            }

            fn __with<R>(f: impl FnOnce(&$plugin) -> R) -> R {
                __WEIR_PLUGIN.with(|p| match &*p.borrow() {
                    ::std::option::Option::Some(plugin) => f(plugin),
                    ::std::option::Option::None => ::std::panic!("a hook was called before init"),
                })
            }

            impl $crate::bindings::Guest for __WeirGuest {
                fn init(
                    config: ::std::string::String,
                ) -> ::std::result::Result<$crate::PluginInfo, ::std::string::String> {
                    let (plugin, info) = <$plugin as $crate::Plugin>::init(&config)?;
                    __WEIR_PLUGIN.with(|p| *p.borrow_mut() = ::std::option::Option::Some(plugin));
                    ::std::result::Result::Ok(info)
                }

                fn on_request(req: &$crate::Request) -> $crate::Decision {
                    __with(|p| <$plugin as $crate::Plugin>::on_request(p, req))
                }

                fn on_response_headers(req: &$crate::Request, status: u16) -> $crate::ResponseAction {
                    __with(|p| <$plugin as $crate::Plugin>::on_response_headers(p, req, status))
                }

                fn on_response(req: &$crate::Request, answer: ::std::vec::Vec<u8>) -> $crate::AnswerAction {
                    __with(|p| <$plugin as $crate::Plugin>::on_response(p, req, answer))
                }

                fn on_stream_event(req: &$crate::Request, event: $crate::StreamEvent) -> $crate::EventAction {
                    __with(|p| <$plugin as $crate::Plugin>::on_stream_event(p, req, event))
                }

                fn on_complete(req: &$crate::Request, outcome: $crate::Completion) {
                    __with(|p| <$plugin as $crate::Plugin>::on_complete(p, req, outcome))
                }
            }

    $crate::bindings::__export_world!(__WeirGuest with_types_in $crate::bindings);
        };
    };
}
