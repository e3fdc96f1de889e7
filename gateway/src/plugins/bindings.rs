//! The host side of the plugin contract, generated from `sdk/wit/weir.wit` and nothing else — and,
//! in [`v0_2`] and [`v0_1`], from the released `weir:plugin@0.2.1` and `@0.1.0` it replaced, for
//! components built against them (served through `compat.rs`).

wasmtime::component::bindgen!({
    path: "../sdk/wit",
    world: "plugin",
    with: {
        "weir:plugin/request.request": super::host::RequestHandle,
    },
    // Every import is async: the state imports wait on the network with the Redis backend and
    // must not hold a worker thread while they do, and every import may give the thread back to
    // the runtime when the call has run a while (`HostState::pace`), since time in the host burns
    // no fuel.
    imports: { default: async | trappable },
    // Exports are called asynchronously so that WASI (which Rust's standard library imports) runs
    // on the gateway's tokio runtime, and so that a plugin past its first epoch tick yields.
    exports: { default: async },
});

/// `weir:plugin@0.2.1`, as released (a 0.2.0 component's imports resolve to it too: the linker
/// matches semver-compatible versions).
pub mod v0_2 {
    wasmtime::component::bindgen!({
        path: "../sdk/wit/released/0.2.1",
        world: "plugin",
        with: {
            "weir:plugin/request.request": crate::plugins::host::RequestHandle,
        },
        // As above: its imports delegate to the current, async ones.
        imports: { default: async | trappable },
        exports: { default: async },
    });
}

/// `weir:plugin@0.1.0`, as released.
pub mod v0_1 {
    wasmtime::component::bindgen!({
        path: "../sdk/wit/released/0.1.0",
        world: "plugin",
        with: {
            "weir:plugin/request.request": crate::plugins::host::RequestHandle,
        },
        // As above: its imports delegate to the current, async ones.
        imports: { default: async | trappable },
        exports: { default: async },
    });
}
