//! The host side of the plugin contract, generated from `sdk/wit/weir.wit` and nothing else.

wasmtime::component::bindgen!({
    path: "../sdk/wit",
    world: "plugin",
    with: {
        "weir:plugin/request.request": super::host::RequestHandle,
    },
    imports: { default: trappable },
    // Exports are called asynchronously so that WASI (which Rust's standard library imports) runs
    // on the gateway's tokio runtime, and so that a plugin past its first epoch tick yields.
    exports: { default: async },
});
