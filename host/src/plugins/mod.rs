//! Rules as the host runs them: loading (read, compile, link, `configure`), the
//! metrics each rule subscribed to, and the pool of threads that evaluates
//! them (`pool`: a bounded queue per rule, turns fair across tenants,
//! `schedule`: who goes next; `worker`: one rule's evaluation).
//!
//! Loading refuses a rule with the exact reason, naming the rule, its file
//! and where the config declares it. Nothing is half-loaded: a rule is
//! either ready for samples or an error. A rule file is read once; its
//! [`trust`] (pin, signature) is checked on those bytes and the same bytes
//! are compiled.

mod pool;
pub mod reload;
mod schedule;
mod startup;
mod subscription;
pub mod trust;
mod worker;

use std::borrow::Cow;
use std::path::Path;
use std::time::Duration;

/// The sha256 of a component, in hex: its identity for reloads and caches.
pub use crate::hash::sha256_hex as content_hash;
pub use subscription::Subscription;
pub use trust::{SignatureFile, Signer};

/// A rule's quarantine settings, parsed with the rest of its config.
pub use crate::config::FailurePolicy;
/// The rules embedded in the binary (they live in the runtime, below the
/// config that names them).
pub use crate::runtime::builtin;
pub use pool::{MAX_THREADS, Offering, Pool, PoolStats, QUEUE, RuleWorker, Stopping};
pub use schedule::{Refused, TenantShare};
pub use startup::load_all;
pub use worker::{Evaluation, RuleBoard, RuleCounters, RuleHealth, RuleState, WorkerEvent};

use crate::config::{RuleSource, RuleSpec};
use crate::hash::Sha256;
use crate::names::{RuleName, TenantName};
use crate::runtime::{LoadError, Origin, RuleInfo, RuleInstance, Runtime};
use crate::state::StateDb;

/// A rule ready to evaluate samples.
pub struct LoadedRule {
    /// Its name from the config.
    pub name: RuleName,
    /// What it said about itself in `configure`.
    pub info: RuleInfo,
    /// The metrics it asked for.
    pub subscription: Subscription,
    /// The running instance.
    pub instance: RuleInstance,
    /// 1 when first loaded, one more for every reload that succeeded.
    pub version: u64,
    /// sha256 of the component, hex.
    pub hash: String,
    /// The targets it sees (its spec's `targets` and `target_labels`).
    pub targets: crate::routing::TargetSelector,
    /// Who signed it, when its trust required a signature.
    pub signer: Option<Signer>,
    /// What its signature file held when it was checked (`None`: not
    /// read), so that a new signature for the same bytes is noticed.
    pub signature: Option<Sha256>,
    /// The tenant it belongs to (`None`: the operator's).
    pub tenant: Option<TenantName>,
}

/// A rule's component as read, with its sha256 and, when its trust needs
/// one, its signature: the one copy that is hashed, checked and compiled.
pub struct RuleBytes {
    bytes: Cow<'static, [u8]>,
    /// Of `bytes`, computed once: the trust pin, the compiled component's
    /// identity and the reloader's all use this one (an 18 MB Python rule
    /// takes ~10 ms to hash).
    hash: Sha256,
    signature: Option<SignatureFile>,
}

impl RuleBytes {
    /// The component embedded in the binary as `builtin` (never signed).
    pub fn builtin(builtin: &'static builtin::Builtin) -> Self {
        RuleBytes {
            bytes: builtin.wasm.into(),
            hash: Sha256::of(builtin.wasm),
            signature: None,
        }
    }

    /// Reads `spec`'s signature, if its trust asks for one, beside `bytes`
    /// already read from `file`.
    pub fn with_signature(
        spec: &RuleSpec,
        file: &Path,
        bytes: Vec<u8>,
    ) -> Result<Self, RuleLoadError> {
        let signature = read_signature(spec, file)?;
        Ok(RuleBytes {
            hash: Sha256::of(&bytes),
            bytes: bytes.into(),
            signature,
        })
    }

    /// A component fetched from elsewhere (a pushed rule from the
    /// cluster's object store), with its signature when one was required.
    pub fn fetched(bytes: Vec<u8>, signature: Option<SignatureFile>) -> Self {
        RuleBytes {
            hash: Sha256::of(&bytes),
            bytes: bytes.into(),
            signature,
        }
    }

    /// The component.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The sha256 of [`bytes`](Self::bytes).
    pub fn hash(&self) -> Sha256 {
        self.hash
    }

    /// `FILE.minisig`, read only when a signature is required.
    pub fn signature(&self) -> Option<&SignatureFile> {
        self.signature.as_ref()
    }
}

/// `file`'s signature when `spec`'s trust requires one, else `None` (not
/// read).
fn read_signature(spec: &RuleSpec, file: &Path) -> Result<Option<SignatureFile>, RuleLoadError> {
    if !spec.trust.requires_signature() {
        return Ok(None);
    }
    SignatureFile::read(file).map(Some).map_err(|error| {
        load_error(
            spec,
            format!(
                "cannot read `{}`: {error}",
                SignatureFile::path_of(file).display()
            ),
        )
    })
}

/// Why a rule could not be loaded.
#[derive(Debug, thiserror::Error)]
#[error("rule `{name}` ({file}, declared at {origin}): {reason}")]
pub struct RuleLoadError {
    /// The rule's name.
    pub name: RuleName,
    /// Its file or builtin name.
    pub file: String,
    /// Where the config declares it.
    pub origin: String,
    /// What is wrong.
    pub reason: String,
}

/// Reads, compiles, links and initialises a rule. Slow for big components:
/// call it off the evaluation path.
pub fn load(
    runtime: &Runtime,
    state: &StateDb,
    spec: &RuleSpec,
) -> Result<LoadedRule, RuleLoadError> {
    let rule = match &spec.source {
        RuleSource::Builtin(builtin) => RuleBytes::builtin(builtin),
        RuleSource::File(path) => {
            let bytes = std::fs::read(path)
                .map_err(|error| load_error(spec, format!("cannot read the file: {error}")))?;
            RuleBytes::with_signature(spec, path, bytes)?
        }
        RuleSource::Pushed { .. } => {
            return Err(load_error(
                spec,
                "a pushed rule is loaded from the cluster's buckets, not from disk".into(),
            ));
        }
    };
    load_bytes(runtime, state, spec, rule)
}

fn load_error(spec: &RuleSpec, reason: String) -> RuleLoadError {
    RuleLoadError {
        name: spec.name.clone(),
        file: spec.source.to_string(),
        origin: spec.origin.clone(),
        reason,
    }
}

/// [`load`] for bytes already read (the reloader hashes them first): checks
/// their trust, then compiles the same bytes.
pub fn load_bytes(
    runtime: &Runtime,
    state: &StateDb,
    spec: &RuleSpec,
    rule: RuleBytes,
) -> Result<LoadedRule, RuleLoadError> {
    let content = Content {
        bytes: &rule.bytes,
        hash: rule.hash,
        signature: rule.signature.as_ref(),
    };
    let (loaded, note) = load_content(runtime, state, spec, content)?;
    note.log(spec, &loaded);
    Ok(loaded)
}

/// A rule's component as the loader checks and compiles it: the bytes, their
/// sha256 (computed once by whoever read them) and the signature read for
/// this rule's trust.
#[derive(Clone, Copy)]
struct Content<'a> {
    bytes: &'a [u8],
    hash: Sha256,
    signature: Option<&'a SignatureFile>,
}

/// What the "Rule loaded." line reports besides the rule itself: kept apart
/// so that loading on several threads still logs in the config's order.
struct LoadNote {
    origin: Origin,
    compile_time: Duration,
}

impl LoadNote {
    /// The host's lines about a rule that loaded: who signed it, if its trust
    /// required a signature, and "Rule loaded.".
    fn log(&self, spec: &RuleSpec, rule: &LoadedRule) {
        if let Some(signer) = &rule.signer {
            tracing::info!(
                rule = %spec.name,
                key = %signer.key.display(),
                trusted_comment = %signer.trusted_comment,
                "Rule signature verified."
            );
        }
        tracing::info!(
            rule = %spec.name,
            version = %rule.info.version,
            source = %spec.source,
            subscriptions = ?rule.info.metrics,
            // `from memory`: another rule loaded from the same bytes already
            // holds the compiled component, which this one shares.
            compiled = self.origin.as_str(),
            compile_time = ?self.compile_time,
            "Rule loaded."
        );
    }
}

/// Checks `content`'s trust for `spec`, compiles it (or shares it) and
/// instantiates and configures the rule. Logs nothing of its own (the rule's
/// output during `configure` goes out as it comes).
fn load_content(
    runtime: &Runtime,
    state: &StateDb,
    spec: &RuleSpec,
    content: Content<'_>,
) -> Result<(LoadedRule, LoadNote), RuleLoadError> {
    let fail = |reason: String| load_error(spec, reason);
    let Content {
        bytes,
        hash,
        signature,
    } = content;
    let signer = spec
        .trust
        .check_hashed(bytes, hash, signature)
        .map_err(|error| fail(error.to_string()))?;
    let prepared = runtime
        .prepare_hashed(bytes, hash)
        .map_err(|error| fail(error.to_string()))?;
    // For the log, to the microsecond: `1.234ms`, not `1.234567ms`.
    let note = LoadNote {
        compile_time: Duration::from_micros(prepared.compile_time.as_micros() as u64),
        origin: prepared.origin,
    };
    let state = state
        .rule_with_quota(&spec.name, spec.limits.max_state_bytes)
        .map_err(|error| fail(error.to_string()))?;
    let (instance, info) = RuleInstance::start(
        runtime,
        &spec.name,
        prepared,
        spec.config_json.clone(),
        spec.limits,
        state,
    )
    .map_err(|error: LoadError| fail(error.to_string()))?;
    let loaded = LoadedRule {
        name: spec.name.as_str().into(),
        subscription: Subscription::new(&info.metrics),
        info,
        instance,
        version: 1,
        hash: hash.to_string(),
        targets: spec.targets.clone(),
        signer,
        signature: signature.and_then(SignatureFile::fingerprint),
        tenant: spec.tenant.clone(),
    };
    Ok((loaded, note))
}
