#![allow(missing_docs)] // generated; the WIT file documents every item that matters
//! The one `bindgen!` call: Rust types and call stubs for `wit/vigil.wit`.
//!
//! Everything else in the host uses the aliases re-exported from
//! [`crate::runtime`], so the generated names appear in one place only.

wasmtime::component::bindgen!({
    world: "rule",
    path: "../wit",
    // The host compares labels and series to decide when a target must be
    // defined again (`targets.rs`).
    additional_derives: [PartialEq],
    imports: {
        // `state-delete` has no error in the contract; a delete past the
        // per-call limit of state changes traps instead.
        "vigil:rules/host.state-delete": trappable,
    },
});
