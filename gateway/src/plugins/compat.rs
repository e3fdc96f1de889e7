//! Components built against an earlier contract keep working: which contract a component was
//! built against ([`Contract::of`], read from the versions of the interfaces it imports), and the
//! host side of each earlier contract — each of its imports delegating to the current one, with
//! the types converted at the boundary: `v0_2.rs` (`weir:plugin@0.2.x`: no rewrite, no
//! `on-response`) and `v0_1.rs` (`@0.1.0`: fewer API kinds and imports).
//!
//! When the contract changes again: freeze the current WIT under `sdk/wit/released/<version>/`,
//! bind it in `bindings.rs`, add a variant to [`Contract`] and a module like these delegating
//! to the newest. An additive change within a minor version (a new import) needs none of this: the
//! older guest simply does not import it, and the linker serves a 0.x.y component's imports from
//! the newest 0.x it has.

pub mod v0_1;
pub mod v0_2;

/// The contract a component was built against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Contract {
    /// `weir:plugin@0.1.x`
    V0_1,
    /// `weir:plugin@0.2.x`
    V0_2,
    /// `weir:plugin@0.3.x`, the current one.
    V0_3,
}

impl Contract {
    /// Reads the version of the `weir:plugin` interfaces `component` imports (every plugin
    /// imports `request`, whose resource its hooks take). `Err` names a version this host does not
    /// serve.
    pub fn of(component: &wasmtime::component::Component, engine: &wasmtime::Engine) -> Result<Self, String> {
        let ty = component.component_type();
        let versions: Vec<String> = ty
            .imports(engine)
            .filter_map(|(name, _)| {
                name.strip_prefix("weir:plugin/").and_then(|n| n.split_once('@')).map(|(_, v)| v.to_owned())
            })
            .collect();
        let Some(version) = versions.first() else {
            // It imports nothing of the contract (no hook takes the request): any version serves.
            return Ok(Contract::V0_3);
        };
        match version.split('.').take(2).collect::<Vec<_>>().as_slice() {
            ["0", "1"] => Ok(Contract::V0_1),
            ["0", "2"] => Ok(Contract::V0_2),
            ["0", "3"] => Ok(Contract::V0_3),
            _ => Err(format!(
                "it was built against weir:plugin@{version}; this gateway serves weir:plugin@0.1, @0.2 and @0.3 (rebuild it with this gateway's weir-sdk)"
            )),
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Contract::V0_1 => "0.1",
            Contract::V0_2 => "0.2",
            Contract::V0_3 => "0.3",
        }
    }
}
