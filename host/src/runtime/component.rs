//! Turning bytes into a rule the host can instantiate, with a precise reason
//! for every way the bytes can be wrong.

use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmtime::component::Component;

use super::Runtime;
use super::bindings::RulePre;
use super::cache::CompileCache;
use super::shared::{Made, SharedComponent};
use crate::hash::Sha256;

/// The WIT package version this host serves.
pub const WIT_VERSION: &str = "0.3.0";
/// The WIT package this host serves, as components name it.
pub const WIT_PACKAGE: &str = "vigil:rules@0.3.0";

/// Why a file is not a rule this host can run.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The bytes do not start with the wasm magic number.
    #[error("not a WebAssembly file (it does not start with `\\0asm`)")]
    NotWasm,
    /// A core module, not a component.
    #[error(
        "a core WebAssembly module, not a component\n\
         hint: build for `wasm32-wasip2`, or wrap it with `wasm-tools component new`"
    )]
    CoreModule,
    /// Wasmtime rejected the component (truncated, malformed, unsupported).
    #[error("not a valid component: {0}")]
    Invalid(String),
    /// Built against another version of the contract.
    #[error(
        "built for `{found}`, but this host serves `{WIT_PACKAGE}`\n\
         hint: rebuild the rule against this host's wit/ folder"
    )]
    WrongVersion {
        /// The import the component asked for.
        found: String,
    },
    /// Asks for something rules are not granted.
    #[error(
        "imports `{0}`, which rules are not granted (only `vigil:rules/host` and WASI's clocks, random and stdio)"
    )]
    ForbiddenImport(String),
    /// Missing one of the world's exports.
    #[error("does not export `{0}`; is it built for the `rule` world of `{WIT_PACKAGE}`?")]
    MissingExport(&'static str),
    /// Linking failed for another reason.
    #[error("cannot be linked: {0}")]
    Link(String),
    /// `configure` returned an error.
    #[error("`configure` refused its config: {0}")]
    ConfigureRefused(String),
    /// `configure` (or instantiation) trapped, timed out or ran out of memory.
    #[error("`configure` failed: {0}")]
    ConfigureFailed(super::CallError),
}

/// A compiled and pre-linked rule, ready to instantiate (cheap) as often as
/// needed. Every `Prepared` of the same bytes from one runtime shares one
/// compiled component (see [`shared`](super::shared)); each instance made
/// from it has its own store.
#[derive(Clone)]
pub struct Prepared {
    pub(crate) shared: Arc<SharedComponent>,
    /// How long getting the compiled component took: compiling it (and
    /// writing it to the cache, if any), loading it from the cache, or
    /// finding it in memory (including waiting for a concurrent compile of
    /// the same bytes).
    pub compile_time: Duration,
    /// Where the compiled component came from.
    pub origin: Origin,
    /// Size of the component in bytes.
    pub size: usize,
    /// What the component imports (interfaces, with versions), sorted.
    pub imports: Vec<String>,
}

impl Prepared {
    /// The sha256 of the component's bytes: what it is shared and cached by.
    pub fn hash(&self) -> Sha256 {
        self.shared.hash
    }
}

/// Where a [`Prepared`] component came from, cheapest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Another rule loaded from the same bytes holds it in memory: shared.
    Memory,
    /// Loaded from the [`CompileCache`] on disk.
    Cache,
    /// Compiled from the bytes now.
    Compiled,
}

impl Origin {
    /// How the "Rule loaded." log line says it: `from memory`, `from cache`
    /// or `now`.
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::Memory => "from memory",
            Origin::Cache => "from cache",
            Origin::Compiled => "now",
        }
    }
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Core wasm modules carry version 1 in bytes 4..8; components carry a
/// different version and layer 1.
const CORE_MODULE_VERSION: [u8; 4] = [1, 0, 0, 0];

impl Runtime {
    /// Compiles and links a component. Slow (milliseconds for Rust, seconds
    /// for interpreters compiled to wasm): keep it off the evaluation path.
    ///
    /// Bytes some rule of this runtime (or of a clone) already prepared and
    /// still uses are not compiled again: the compiled component in memory
    /// is shared ([`Origin::Memory`]). Otherwise, with a [compile
    /// cache](Self::with_compile_cache), a component compiled before is
    /// loaded from there, in milliseconds.
    pub fn prepare(&self, bytes: &[u8]) -> Result<Prepared, LoadError> {
        check_magic(bytes)?;
        self.prepare_hashed(bytes, Sha256::of(bytes))
    }

    /// [`prepare`](Self::prepare) with the sha256 of `bytes` already
    /// computed by the loader, which hashes a rule file once for its trust
    /// pin, this and its reload identity (an 18 MB Python component takes
    /// ~10 ms to hash, more than instantiating it).
    ///
    /// `hash` must be the digest of `bytes`: it is what the compiled
    /// component is shared and cached by, so a wrong one would hand another
    /// component's code to this rule. Hence crate-private, and checked in
    /// debug builds.
    pub(crate) fn prepare_hashed(&self, bytes: &[u8], hash: Sha256) -> Result<Prepared, LoadError> {
        debug_assert!(
            hash == Sha256::of(bytes),
            "the hash given is not of these bytes"
        );
        check_magic(bytes)?;
        let started = Instant::now();
        let cache = self.cache.as_ref();
        let mut origin = Origin::Memory;
        let shared = self.components.get_or_prepare(hash, || {
            let (made, from) = self.make(bytes, &hash, cache)?;
            origin = from;
            Ok::<_, LoadError>(made)
        })?;
        Ok(Prepared {
            size: shared.size,
            imports: shared.imports.clone(),
            shared,
            compile_time: started.elapsed(),
            origin,
        })
    }

    /// [`prepare`](Self::prepare) with this `cache`, or none, whatever the
    /// runtime was built with, and without sharing: the compiled component
    /// comes from `cache` when it holds one for these bytes and this
    /// engine, and is added to it otherwise; it is never taken from, nor
    /// offered to, the components in memory. For measuring and testing the
    /// cache; the host loads rules with `prepare`. The checks on the
    /// component are the same either way.
    pub fn prepare_cached(
        &self,
        bytes: &[u8],
        cache: Option<&CompileCache>,
    ) -> Result<Prepared, LoadError> {
        check_magic(bytes)?;
        let started = Instant::now();
        let hash = Sha256::of(bytes);
        let (made, origin) = self.make(bytes, &hash, cache)?;
        let shared = SharedComponent::alone(hash, made);
        Ok(Prepared {
            size: shared.size,
            imports: shared.imports.clone(),
            shared,
            compile_time: started.elapsed(),
            origin,
        })
    }

    /// Compiles `bytes` (or loads them from `cache`), checks the component
    /// against the world and pre-links it.
    fn make(
        &self,
        bytes: &[u8],
        hash: &Sha256,
        cache: Option<&CompileCache>,
    ) -> Result<(Made, Origin), LoadError> {
        let invalid = |error: wasmtime::Error| LoadError::Invalid(format!("{error:#}"));
        let (component, cached) = match cache {
            Some(cache) => cache
                .component(&self.engine, bytes, hash)
                .map_err(invalid)?,
            None => (Component::new(&self.engine, bytes).map_err(invalid)?, false),
        };
        let origin = if cached {
            self.components.loaded_from_cache();
            Origin::Cache
        } else {
            self.components.compiled();
            crate::allocator::give_back_free_memory();
            Origin::Compiled
        };
        self.check_world(&component)?;
        let instance_pre = self
            .linker
            .instantiate_pre(&component)
            .map_err(|error| LoadError::Link(format!("{error:#}")))?;
        let pre =
            RulePre::new(instance_pre).map_err(|error| LoadError::Link(format!("{error:#}")))?;
        let ty = component.component_type();
        let mut imports: Vec<String> = ty
            .imports(&self.engine)
            .map(|(name, _)| name.to_string())
            .collect();
        imports.sort();
        let made = Made {
            pre,
            size: bytes.len(),
            imports,
        };
        Ok((made, origin))
    }

    /// Checks imports and exports against the `rule` world so that the
    /// common mistakes get a message better than a linker error.
    fn check_world(&self, component: &Component) -> Result<(), LoadError> {
        let ty = component.component_type();
        for (name, _) in ty.imports(&self.engine) {
            if let Some(interface) = name.strip_prefix("vigil:rules/") {
                let version = interface.split_once('@').map(|(_, version)| version);
                if !version.is_some_and(compatible) {
                    return Err(LoadError::WrongVersion {
                        found: name.to_string(),
                    });
                }
            } else if !is_granted_wasi(name) {
                return Err(LoadError::ForbiddenImport(name.to_string()));
            }
        }
        for export in ["configure", "define-target", "evaluate", "forget-target"] {
            if ty.get_export(&self.engine, export).is_none() {
                return Err(LoadError::MissingExport(export));
            }
        }
        Ok(())
    }
}

/// Refuses what is not a component before anything is hashed or compiled.
fn check_magic(bytes: &[u8]) -> Result<(), LoadError> {
    if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
        return Err(LoadError::NotWasm);
    }
    if bytes[4..8] == CORE_MODULE_VERSION {
        return Err(LoadError::CoreModule);
    }
    Ok(())
}

/// Semver compatibility as the component model sees it: same major, and for
/// 0.x the same minor.
fn compatible(version: &str) -> bool {
    let key = |v: &str| -> Option<(u64, u64)> {
        let mut parts = v.split('.');
        let major = parts.next()?.parse().ok()?;
        let minor = parts.next()?.parse().ok()?;
        Some((major, if major == 0 { minor } else { 0 }))
    };
    key(version).is_some() && key(version) == key(WIT_VERSION)
}

/// WASI interfaces a rule may import. Language toolchains link stdio,
/// clocks and random, and import filesystem and socket interfaces even when
/// the rule never uses them; those are linked but the sandbox grants them
/// nothing (no preopened directory, sockets switched off; see
/// `sandbox::StoreData::new`). `wasi:http` is not among them: rules do not
/// talk to the network.
fn is_granted_wasi(name: &str) -> bool {
    const GRANTED: [&str; 6] = [
        "wasi:cli/",
        "wasi:io/",
        "wasi:clocks/",
        "wasi:random/",
        "wasi:filesystem/",
        "wasi:sockets/",
    ];
    GRANTED.iter().any(|prefix| name.starts_with(prefix))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_version_constants_match_the_wit_file() {
        let wit = include_str!("../../../wit/vigil.wit");
        assert!(wit.contains(&format!("package {WIT_PACKAGE};")));
        assert_eq!(WIT_PACKAGE, format!("vigil:rules@{WIT_VERSION}"));
    }

    #[test]
    fn semver_compatibility() {
        assert!(compatible("0.3.0"));
        assert!(compatible("0.3.7"));
        assert!(!compatible("0.2.0"));
        assert!(!compatible("0.4.0"));
        assert!(!compatible("1.1.0"));
        assert!(!compatible("garbage"));
    }
}
