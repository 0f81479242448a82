//! Rules embedded in the binary, built from `plugins/` by `build.rs`. They
//! sit here, with the engine, so that the config can name them without
//! depending on the rule workers.

/// An embedded rule.
#[derive(Debug)]
pub struct Builtin {
    /// The name used in configs: `builtin = "threshold"`.
    pub name: &'static str,
    /// The component.
    pub wasm: &'static [u8],
}

/// The default rule: thresholds per metric, plus target-down.
pub static THRESHOLD: Builtin = Builtin {
    name: "threshold",
    wasm: include_bytes!(concat!(env!("VIGIL_RULES_DIR"), "/vigil_threshold.wasm")),
};

static ALL: [&Builtin; 1] = [&THRESHOLD];

/// Looks a builtin up by name.
pub fn find(name: &str) -> Option<&'static Builtin> {
    ALL.iter().copied().find(|builtin| builtin.name == name)
}

/// Every builtin's name.
pub fn names() -> Vec<&'static str> {
    ALL.iter().map(|builtin| builtin.name).collect()
}
