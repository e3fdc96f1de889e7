//! The host side of the plugin contract, generated from `sdk/wit/weir.wit` and nothing else — and,
//! in [`v0_1`], from the released `weir:plugin@0.1.0` it replaced, for components built against it
//! (served through `compat.rs`).

wasmtime::component::bindgen!({
    path: "../sdk/wit",
    world: "plugin",
    with: {
        "weir:plugin/request.request": super::host::RequestHandle,
    },
    // The state imports are async: with the Redis backend they wait on the network, and they
    // must not hold a worker thread while they do. The rest answer from memory.
    imports: {
        "weir:plugin/kv": async | trappable,
        "weir:plugin/quota": async | trappable,
        "weir:plugin/ledger": async | trappable,
        default: trappable,
    },
    // Exports are called asynchronously so that WASI (which Rust's standard library imports) runs
    // on the gateway's tokio runtime, and so that a plugin past its first epoch tick yields.
    exports: { default: async },
});

/// `weir:plugin@0.1.0`, as released.
pub mod v0_1 {
    wasmtime::component::bindgen!({
        path: "../sdk/wit/released/0.1.0",
        world: "plugin",
        with: {
            "weir:plugin/request.request": crate::plugins::host::RequestHandle,
        },
        // As above: its state imports delegate to the current, async ones.
        imports: {
            "weir:plugin/kv": async | trappable,
            "weir:plugin/quota": async | trappable,
            "weir:plugin/ledger": async | trappable,
            default: trappable,
        },
        exports: { default: async },
    });
}
