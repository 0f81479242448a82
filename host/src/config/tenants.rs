//! Tenants: teams that share one host. The operator's config grants each
//! tenant what it may use (`[[tenants]]`); the tenant's own file, which its
//! team edits, chooses within that grant (`tenants.d/NAME.toml`).
//!
//! ```toml
//! # vigil.toml (the operator's)
//! [[tenants]]
//! name = "payments"
//! file = "tenants.d/payments.toml"     # the default: tenants.d/NAME.toml
//! targets = ["pay-*"]                  # what its rules may see: names, globs,
//! target_labels = { team = "payments" } # and labels (at least one of the two)
//! actions = ["restart-pay"]            # declared actions it may request
//! sinks = ["payments-hook"]            # [[sinks]] its alerts may go to
//! max_rules = 10
//! max_memory_mib = 64                  # per rule instance
//! max_timeout = "100ms"                # per evaluation
//! max_state_bytes = "1MiB"             # per rule
//! evaluations_per_second = 1000        # all its rules together
//! require_signature = true             # its rule files must be signed
//!
//! # tenants.d/payments.toml (the tenant's)
//! actions = ["restart-pay"]            # optional: fewer than granted
//! sinks = ["payments-hook"]
//! [trust]
//! keys = ["payments.pub"]              # keys the tenant trusts
//! [[rules]]
//! name = "disk-full"                   # runs as `payments/disk-full`
//! path = "payments/disk.wasm"          # inside the tenant file's folder
//! targets = ["pay-db-*"]               # within the grant
//! timeout = "50ms"                     # at most the grant's
//! ```
//!
//! | guarantees | refuses to |
//! |---|---|
//! | a tenant's rule sees only targets its grant selects: its own selector is the grant's, narrowed | accept a rule pattern no grant pattern covers, or a label the grant fixes to another value |
//! | its rules are named `tenant/rule`, so state, fingerprints and audit records of two tenants never meet | accept a rule name holding `/` |
//! | a tenant file asking for more than the grant (actions, sinks, limits, targets, fewer signatures, more rules) is refused with the reason | let a tenant raise a limit the operator set |
//! | a refused tenant file leaves that tenant's last accepted file in force (if it still fits the grant), and touches no other tenant | stop the host, or the other tenants, over one tenant's file |

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Component, Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use super::{
    ConfigDuration, ConfigError, RuleConfig, RuleSpec, Settings, TrustConfig, check_label_name,
    line_of,
};
use crate::actions::ActionSpec;
use crate::alerts::AlertLimits;
use crate::names::{ActionName, RuleName, Syntax, TenantName};
use crate::routing::{NamePattern, TargetSelector};
use crate::runtime::Limits;
use crate::sinks::SinkSpec;
use crate::size::TextSize;

/// Rules a tenant may run when its grant does not say.
pub const DEFAULT_MAX_RULES: usize = 10;
/// Memory per rule instance a tenant may use when its grant does not say.
pub const DEFAULT_MAX_MEMORY_MIB: usize = 64;

/// What the operator lets one tenant use. The tenant's file can only
/// narrow it.
#[derive(Debug, Clone, PartialEq)]
pub struct TenantGrant {
    /// The targets its rules may see.
    pub targets: TargetSelector,
    /// The declared actions its rules may request.
    pub actions: BTreeSet<ActionName>,
    /// The sinks its alerts may go to.
    pub sinks: BTreeSet<String>,
    /// Most rules it may run.
    pub max_rules: usize,
    /// The most any of its rules may have of each limit; also what its
    /// rules get when their table does not say.
    pub limits: Limits,
    /// Evaluations per second of all its rules together; `None`: no cap.
    pub evaluations_per_second: Option<u32>,
    /// Whether every rule file of the tenant must be signed by a key its
    /// file trusts.
    pub require_signature: bool,
}

/// One tenant as the host runs it.
#[derive(Debug, Clone, PartialEq)]
pub struct TenantSpec {
    /// Its name: the first half of its rules' names and its alerts'
    /// `tenant` label.
    pub name: TenantName,
    /// Its file.
    pub file: PathBuf,
    /// What the operator granted.
    pub grant: TenantGrant,
    /// The actions its rules may request: what its file chose within the
    /// grant (all granted ones when it does not say).
    pub actions: BTreeSet<ActionName>,
    /// The sinks its alerts go to: what its file chose within the grant.
    pub sinks: BTreeSet<String>,
    /// The text of its file in force; `None` while none was accepted (it
    /// then runs no rule).
    pub accepted: Option<String>,
    /// Why its file, as it is now, was refused; `None` when it is the one
    /// in force.
    pub refused: Option<String>,
    /// The keys its file trusts and whether its rules must be signed (the
    /// grant's `require_signature` included): what its rules pushed to the
    /// cluster must pass, as its rule files do.
    pub trust: crate::plugins::trust::TrustSettings,
}

/// A `[[tenants]]` table.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct TenantConfig {
    name: String,
    file: Option<PathBuf>,
    targets: Option<Vec<String>>,
    #[serde(default)]
    target_labels: BTreeMap<String, String>,
    #[serde(default)]
    actions: Vec<String>,
    #[serde(default)]
    sinks: Vec<String>,
    max_rules: Option<usize>,
    max_memory_mib: Option<usize>,
    max_timeout: Option<ConfigDuration>,
    max_state_bytes: Option<TextSize>,
    evaluations_per_second: Option<u32>,
    #[serde(default)]
    require_signature: bool,
}

/// A tenant's own file.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TenantFile {
    actions: Option<Vec<String>>,
    sinks: Option<Vec<String>>,
    trust: Option<Spanned<TrustConfig>>,
    #[serde(default)]
    rules: Vec<Spanned<RuleConfig>>,
}

/// What a tenant's file adds to the host, once accepted.
pub(super) struct Resolved {
    pub rules: Vec<RuleSpec>,
    pub alert_limits: Vec<(RuleName, AlertLimits)>,
    pub actions: BTreeSet<ActionName>,
    pub sinks: BTreeSet<String>,
    pub trust: crate::plugins::trust::TrustSettings,
}

impl TenantConfig {
    /// Checks the grant against what the operator declared.
    pub(super) fn validate(
        self,
        base: &Path,
        actions: &BTreeMap<ActionName, ActionSpec>,
        sinks: &[SinkSpec],
    ) -> Result<(TenantName, PathBuf, TenantGrant), String> {
        let name = self.name;
        if !Syntax::Word.accepts(&name) {
            return Err(format!(
                "tenant name `{name}` is invalid; use letters, digits, `-` and `_`"
            ));
        }
        let fail = |message: String| format!("tenant `{name}`: {message}");
        let names = match self.targets {
            None => Vec::new(),
            Some(list) if list.is_empty() => {
                return Err(fail("targets = [] grants no target at all\nhint: name the targets the tenant may see, e.g. targets = [\"pay-*\"]".into()));
            }
            Some(list) => list
                .iter()
                .map(|text| {
                    NamePattern::new(text).map_err(|error| fail(format!("targets: {error}")))
                })
                .collect::<Result<_, _>>()?,
        };
        for label in self.target_labels.keys() {
            check_label_name(label).map_err(&fail)?;
        }
        let targets = TargetSelector {
            names,
            labels: self.target_labels,
        };
        if targets.is_all() {
            return Err(fail("no targets are granted\nhint: grant them with `targets = [\"pay-*\"]` (names or globs) or `target_labels = { team = \"payments\" }`; `targets = [\"*\"]` grants every target".into()));
        }
        let mut granted_actions = BTreeSet::new();
        for action in self.actions {
            if !actions.contains_key(action.as_str()) {
                return Err(fail(format!(
                    "action `{action}` is not declared\nhint: declare it in [actions.{action}] first, or remove it from the grant"
                )));
            }
            granted_actions.insert(ActionName::from(action));
        }
        let mut granted_sinks = BTreeSet::new();
        for sink in self.sinks {
            if !sinks.iter().any(|spec| spec.name == sink) {
                return Err(fail(format!(
                    "sink `{sink}` is not declared\nhint: declare it in a [[sinks]] table with name = \"{sink}\""
                )));
            }
            granted_sinks.insert(sink);
        }
        let max_rules = self.max_rules.unwrap_or(DEFAULT_MAX_RULES);
        if max_rules == 0 {
            return Err(fail(
                "max_rules = 0 lets the tenant run nothing\nhint: remove the tenant instead".into(),
            ));
        }
        let mut limits = Limits {
            max_memory_bytes: DEFAULT_MAX_MEMORY_MIB * 1024 * 1024,
            ..Limits::default()
        };
        if let Some(mib) = self.max_memory_mib {
            if mib == 0 {
                return Err(fail("max_memory_mib must be at least 1".into()));
            }
            limits.max_memory_bytes = mib.saturating_mul(1024 * 1024);
        }
        if let Some(timeout) = self.max_timeout {
            limits.evaluate_timeout = timeout.0;
        }
        if let Some(size) = self.max_state_bytes {
            limits.max_state_bytes = usize::try_from(size.bytes()).unwrap_or(usize::MAX);
        }
        if self.evaluations_per_second == Some(0) {
            return Err(fail("evaluations_per_second = 0 stops every rule of the tenant\nhint: leave it out for no cap".into()));
        }
        let file = base.join(
            self.file
                .unwrap_or_else(|| Path::new("tenants.d").join(format!("{name}.toml"))),
        );
        Ok((
            TenantName::from(name),
            file,
            TenantGrant {
                targets,
                actions: granted_actions,
                sinks: granted_sinks,
                max_rules,
                limits,
                evaluations_per_second: self.evaluations_per_second,
                require_signature: self.require_signature,
            },
        ))
    }
}

impl TenantSpec {
    /// Its share of the evaluation pool (the grant's rate).
    pub fn share(&self) -> crate::plugins::TenantShare {
        crate::plugins::TenantShare {
            evaluations_per_second: self.grant.evaluations_per_second,
        }
    }

    /// The tenant `name` with its file read and checked against `grant`. A
    /// file that is refused leaves `previous`'s accepted text in force, if
    /// there is one and it still fits the grant. Never fails: a refusal is
    /// recorded in [`TenantSpec::refused`] and the tenant runs what it can.
    pub(super) fn load(
        name: TenantName,
        file: PathBuf,
        grant: TenantGrant,
        previous: Option<&TenantSpec>,
    ) -> (TenantSpec, Option<Resolved>) {
        let current = std::fs::read_to_string(&file).map_err(|error| {
            format!(
                "{}: cannot read the tenant's file: {error}\nhint: the operator's config names it in the [[tenants]] table of `{name}`",
                file.display()
            )
        });
        let attempt = current
            .as_ref()
            .map_err(Clone::clone)
            .and_then(|text| resolve(&name, &file, &grant, text).map_err(|e| e.to_string()));
        // No file in force: no key is trusted, and what the grant requires
        // still holds.
        let trust = crate::plugins::trust::TrustSettings {
            require_signature: grant.require_signature,
            ..Default::default()
        };
        let mut spec = TenantSpec {
            name,
            file,
            actions: BTreeSet::new(),
            sinks: BTreeSet::new(),
            grant,
            accepted: None,
            refused: None,
            trust,
        };
        let resolved = match attempt {
            Ok(resolved) => {
                spec.accepted = current.ok();
                Some(resolved)
            }
            Err(reason) => {
                let kept = previous.and_then(|previous| previous.accepted.clone());
                let fallback = kept.and_then(|text| {
                    match resolve(&spec.name, &spec.file, &spec.grant, &text) {
                        Ok(resolved) => Some((text, resolved)),
                        Err(error) => {
                            tracing::error!(tenant = %spec.name, %error, "The tenant's previous file no longer fits its grant either; the tenant runs no rule.");
                            None
                        }
                    }
                });
                match &fallback {
                    Some(_) => {
                        tracing::error!(tenant = %spec.name, %reason, "Tenant file refused; the tenant's previous file stays in force.")
                    }
                    None => {
                        tracing::error!(tenant = %spec.name, %reason, "Tenant file refused; the tenant runs no rule until it is fixed.")
                    }
                }
                spec.refused = Some(reason);
                fallback.map(|(text, resolved)| {
                    spec.accepted = Some(text);
                    resolved
                })
            }
        };
        if let Some(resolved) = &resolved {
            spec.actions = resolved.actions.clone();
            spec.sinks = resolved.sinks.clone();
            spec.trust = resolved.trust.clone();
        }
        (spec, resolved)
    }
}

/// Checks a tenant's file `text` (read from `file`) against its grant and
/// makes its rules.
fn resolve(
    tenant: &TenantName,
    file: &Path,
    grant: &TenantGrant,
    text: &str,
) -> Result<Resolved, ConfigError> {
    let parsed: TenantFile = toml::from_str(text).map_err(|error| ConfigError {
        location: file.display().to_string(),
        message: error.to_string().trim_end().to_string(),
    })?;
    let at =
        |span: std::ops::Range<usize>| format!("{}:{}", file.display(), line_of(text, span.start));
    let whole = |message: String| ConfigError {
        location: file.display().to_string(),
        message,
    };
    let base = file.parent().unwrap_or(Path::new("."));
    let actions = choose("action", parsed.actions, &grant.actions, tenant).map_err(whole)?;
    let sinks = choose("sink", parsed.sinks, &grant.sinks, tenant).map_err(whole)?;
    let mut trust = super::section(parsed.trust, "trust", &at, |section| section.validate(base))?;
    if grant.require_signature {
        trust.require_signature = true;
    }
    if parsed.rules.len() > grant.max_rules {
        return Err(whole(format!(
            "{} rules, but tenant `{tenant}` may run {} (max_rules in the operator's grant)",
            parsed.rules.len(),
            grant.max_rules
        )));
    }
    let mut rules = Vec::new();
    let mut alert_limits = Vec::new();
    for spanned in parsed.rules {
        let location = at(spanned.span());
        let fail = |message: String| ConfigError {
            location: location.clone(),
            message,
        };
        let rule = spanned.into_inner();
        let spec = tenant_rule(
            tenant,
            grant,
            base,
            rule,
            &location,
            &trust,
            &mut alert_limits,
        )
        .map_err(fail)?;
        if rules.iter().any(|other: &RuleSpec| other.name == spec.name) {
            return Err(super::rule_named_twice(location, &spec.name));
        }
        rules.push(spec);
    }
    Ok(Resolved {
        rules,
        alert_limits,
        actions,
        sinks,
        trust,
    })
}

/// What a tenant file picks of a granted set: all of it when it does not
/// say, else its list, which must hold granted names only.
fn choose<T: Ord + Clone + for<'a> From<&'a str> + std::borrow::Borrow<str>>(
    kind: &str,
    chosen: Option<Vec<String>>,
    granted: &BTreeSet<T>,
    tenant: &TenantName,
) -> Result<BTreeSet<T>, String> {
    let Some(chosen) = chosen else {
        return Ok(granted.clone());
    };
    let mut picked = BTreeSet::new();
    for name in chosen {
        match granted.get(name.as_str()) {
            Some(granted) => {
                picked.insert(granted.clone());
            }
            None => {
                let list: Vec<&str> = granted.iter().map(|g| g.borrow()).collect();
                return Err(format!(
                    "{kind} `{name}` is not granted to tenant `{tenant}` (granted: {})\nhint: ask the operator to add it to the tenant's `{kind}s` in their config",
                    if list.is_empty() {
                        "none".to_string()
                    } else {
                        list.join(", ")
                    }
                ));
            }
        }
    }
    Ok(picked)
}

/// One `[[rules]]` table of a tenant's file, held to the grant.
fn tenant_rule(
    tenant: &TenantName,
    grant: &TenantGrant,
    base: &Path,
    mut rule: RuleConfig,
    origin: &str,
    trust: &crate::plugins::trust::TrustSettings,
    alert_limits: &mut Vec<(RuleName, AlertLimits)>,
) -> Result<RuleSpec, String> {
    if rule.dir.is_some() {
        return Err("a tenant's rule takes `path` or `builtin`, not `dir`\nhint: list each rule in a [[rules]] table of its own, so that `max_rules` holds".into());
    }
    if let Some(path) = &rule.path {
        inside(base, path)?;
    }
    if grant.require_signature && rule.require_signature == Some(false) {
        return Err("require_signature = false, but the operator requires every rule of this tenant to be signed".into());
    }
    let defaults = Limits::default();
    let granted = grant.limits;
    // What the table leaves out, the grant gives.
    if rule.max_memory_mib.is_none() {
        rule.max_memory_mib = Some(granted.max_memory_bytes.div_ceil(1024 * 1024));
    }
    if rule.timeout.is_none() {
        rule.timeout = Some(ConfigDuration(granted.evaluate_timeout));
    }
    if rule.max_state_bytes.is_none() {
        rule.max_state_bytes = Some(TextSize(granted.max_state_bytes as u64));
    }
    let limits = rule.alert_limits()?;
    let defaults_alerts = AlertLimits::default();
    if limits.per_target > defaults_alerts.per_target || limits.per_rule > defaults_alerts.per_rule
    {
        return Err(format!(
            "a tenant's rule may track at most {} active alerts per target and {} in all\nhint: lower max_active_alerts_per_target / max_active_alerts",
            defaults_alerts.per_target, defaults_alerts.per_rule
        ));
    }
    let own_targets = rule.targets.clone();
    let mut spec = rule.validate(base, origin, trust)?;
    let own = spec.name.to_string();
    if !Syntax::Word.accepts(&own) {
        return Err(format!(
            "rule name `{own}` is invalid for a tenant's rule; use letters, digits, `-` and `_` (the host names it `{tenant}/NAME`)"
        ));
    }
    spec.name = RuleName::of_tenant(tenant, &own);
    spec.tenant = Some(tenant.clone());
    let asked = spec.limits;
    let over: Vec<String> = [
        (
            "max_memory_mib",
            asked.max_memory_bytes > granted.max_memory_bytes,
            format!("{} MiB", granted.max_memory_bytes / (1024 * 1024)),
        ),
        (
            "timeout",
            asked.evaluate_timeout > granted.evaluate_timeout,
            humantime::format_duration(granted.evaluate_timeout).to_string(),
        ),
        (
            "max_state_bytes",
            asked.max_state_bytes > granted.max_state_bytes,
            format!("{} bytes", granted.max_state_bytes),
        ),
        (
            "init_timeout",
            asked.init_timeout > defaults.init_timeout,
            humantime::format_duration(defaults.init_timeout).to_string(),
        ),
        (
            "max_alerts",
            asked.max_alerts > defaults.max_alerts,
            defaults.max_alerts.to_string(),
        ),
        (
            "max_actions",
            asked.max_actions > defaults.max_actions,
            defaults.max_actions.to_string(),
        ),
        (
            "max_verdict_bytes",
            asked.max_verdict_bytes > defaults.max_verdict_bytes,
            defaults.max_verdict_bytes.to_string(),
        ),
        (
            "log_lines_per_second",
            asked.log_lines_per_second > defaults.log_lines_per_second,
            defaults.log_lines_per_second.to_string(),
        ),
    ]
    .into_iter()
    .filter(|(_, over, _)| *over)
    .map(|(key, _, most)| format!("{key} (at most {most})"))
    .collect();
    if !over.is_empty() {
        return Err(format!(
            "rule `{own}` asks for more than tenant `{tenant}` is granted: {}\nhint: lower them, or ask the operator to raise the grant",
            over.join(", ")
        ));
    }
    spec.targets = within_grant(&spec.targets, &grant.targets, own_targets.is_some())
        .map_err(|error| format!("rule `{own}`: {error}"))?;
    alert_limits.push((spec.name.clone(), limits));
    Ok(spec)
}

/// The rule's selector narrowed to the grant: the rule sees a target only
/// when both take it. A name pattern of the rule must be covered by one of
/// the grant's, and a label the grant fixes cannot be asked with another
/// value: either would ask for targets outside the grant.
fn within_grant(
    own: &TargetSelector,
    grant: &TargetSelector,
    named: bool,
) -> Result<TargetSelector, String> {
    let names = if !named {
        grant.names.clone()
    } else {
        if !grant.names.is_empty() {
            for pattern in &own.names {
                if !grant.names.iter().any(|granted| granted.covers(pattern)) {
                    let granted: Vec<String> =
                        grant.names.iter().map(ToString::to_string).collect();
                    return Err(format!(
                        "targets: `{pattern}` is not within the targets granted to the tenant ({})\nhint: name targets the grant covers, or leave `targets` out for all of them",
                        granted.join(", ")
                    ));
                }
            }
        }
        own.names.clone()
    };
    let mut labels = grant.labels.clone();
    for (name, value) in &own.labels {
        match grant.labels.get(name) {
            Some(granted) if granted != value => {
                return Err(format!(
                    "target_labels: {name} = {value:?}, but the tenant is granted only targets with {name} = {granted:?}"
                ));
            }
            _ => {
                labels.insert(name.clone(), value.clone());
            }
        }
    }
    Ok(TargetSelector { names, labels })
}

/// Refuses a rule path that could leave the tenant file's folder: absolute,
/// or with `..`, or (when it exists) resolving elsewhere through a link.
fn inside(base: &Path, path: &Path) -> Result<(), String> {
    let escapes = path.is_absolute()
        || path
            .components()
            .any(|part| !matches!(part, Component::Normal(_) | Component::CurDir));
    let hint = format!(
        "hint: a tenant's rule files live in `{}`, the folder of its file; write a path relative to it",
        base.display()
    );
    if escapes {
        return Err(format!(
            "path `{}` leaves the tenant's folder\n{hint}",
            path.display()
        ));
    }
    if let (Ok(real), Ok(folder)) = (base.join(path).canonicalize(), base.canonicalize())
        && !real.starts_with(&folder)
    {
        return Err(format!(
            "path `{}` resolves to `{}`, outside the tenant's folder\n{hint}",
            path.display(),
            real.display()
        ));
    }
    Ok(())
}

impl Settings {
    /// The tenants whose file is refused now, with the reason.
    pub fn refused_tenants(&self) -> impl Iterator<Item = (&TenantName, &str)> {
        self.tenants
            .iter()
            .filter_map(|tenant| Some((&tenant.name, tenant.refused.as_deref()?)))
    }

    /// What each tenant's rules may request, for the remediation gate.
    pub fn tenant_actions(&self) -> crate::actions::TenantActions {
        self.tenants
            .iter()
            .map(|tenant| (tenant.name.clone(), tenant.actions.clone()))
            .collect()
    }

    /// Which sinks each tenant's alerts go to, for delivery.
    pub fn tenant_sinks(&self) -> crate::sinks::TenantSinks {
        self.tenants
            .iter()
            .map(|tenant| (tenant.name.clone(), tenant.sinks.clone()))
            .collect()
    }
}

/// One tenant as the API shows it: its grant, what its file chose, and
/// whether that file is in force or why not.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TenantView {
    /// The tenant's name.
    pub name: TenantName,
    /// Its file.
    pub file: String,
    /// Whether a file of the tenant is in force (its rules run).
    pub in_force: bool,
    /// Why its file, as it is now, was refused.
    pub refused: Option<String>,
    /// Its rules, by full name (`tenant/rule`).
    pub rules: Vec<RuleName>,
    /// The actions its rules may request.
    pub actions: BTreeSet<ActionName>,
    /// The sinks its alerts go to.
    pub sinks: BTreeSet<String>,
    /// What the operator granted.
    pub grant: GrantView,
}

/// A [`TenantGrant`] as the API shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct GrantView {
    /// Target names or globs (none: any name the labels take).
    pub targets: Vec<String>,
    /// Labels every granted target carries.
    pub target_labels: BTreeMap<String, String>,
    /// Actions granted.
    pub actions: BTreeSet<ActionName>,
    /// Sinks granted.
    pub sinks: BTreeSet<String>,
    /// Most rules.
    pub max_rules: usize,
    /// Most memory per rule instance, in bytes.
    pub max_memory_bytes: usize,
    /// Longest evaluation, in milliseconds.
    pub max_timeout_ms: u64,
    /// Most key-value state per rule, in bytes.
    pub max_state_bytes: usize,
    /// Evaluations per second of all its rules together, if capped.
    pub evaluations_per_second: Option<u32>,
    /// Whether its rule files must be signed.
    pub require_signature: bool,
}

/// The tenants as configured now: the read model the API shows, published
/// at start and on every reload. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct TenantBoard(std::sync::Arc<std::sync::RwLock<Vec<TenantView>>>);

impl TenantBoard {
    /// Publishes the tenants of `settings`.
    pub fn publish(&self, settings: &Settings) {
        let views = settings
            .tenants
            .iter()
            .map(|tenant| {
                let grant = &tenant.grant;
                TenantView {
                    name: tenant.name.clone(),
                    file: tenant.file.display().to_string(),
                    in_force: tenant.accepted.is_some(),
                    refused: tenant.refused.clone(),
                    rules: settings
                        .rules
                        .iter()
                        .filter(|rule| rule.tenant.as_ref() == Some(&tenant.name))
                        .map(|rule| rule.name.clone())
                        .collect(),
                    actions: tenant.actions.clone(),
                    sinks: tenant.sinks.clone(),
                    grant: GrantView {
                        targets: grant
                            .targets
                            .names
                            .iter()
                            .map(ToString::to_string)
                            .collect(),
                        target_labels: grant.targets.labels.clone(),
                        actions: grant.actions.clone(),
                        sinks: grant.sinks.clone(),
                        max_rules: grant.max_rules,
                        max_memory_bytes: grant.limits.max_memory_bytes,
                        max_timeout_ms: grant.limits.evaluate_timeout.as_millis() as u64,
                        max_state_bytes: grant.limits.max_state_bytes,
                        evaluations_per_second: grant.evaluations_per_second,
                        require_signature: grant.require_signature,
                    },
                }
            })
            .collect();
        *self
            .0
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = views;
    }

    /// Every tenant, in config order.
    pub fn snapshot(&self) -> Vec<TenantView> {
        self.0
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parses `config` written in a fresh folder next to `tenant` (the
    /// text of `tenants.d/t.toml`, when given).
    fn parse(config: &str, tenant: Option<&str>) -> Result<Settings, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("tenants.d")).unwrap();
        if let Some(text) = tenant {
            std::fs::write(dir.path().join("tenants.d/t.toml"), text).unwrap();
        }
        let path = dir.path().join("vigil.toml");
        let text = format!("[[targets]]\nname = \"web-01\"\nkind = \"local\"\n\n{config}");
        Settings::parse(&text, &path)
    }

    fn refused_grant(grant: &str) -> String {
        parse(&format!("[[tenants]]\nname = \"t\"\n{grant}"), Some(""))
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn a_grant_names_only_what_the_operator_declared() {
        assert!(refused_grant("").contains("no targets are granted"));
        assert!(refused_grant("targets = []").contains("grants no target at all"));
        assert!(
            refused_grant("targets = [\"*\"]\nactions = [\"restart\"]")
                .contains("action `restart` is not declared")
        );
        assert!(
            refused_grant("targets = [\"*\"]\nsinks = [\"pager\"]")
                .contains("sink `pager` is not declared")
        );
        assert!(refused_grant("targets = [\"*\"]\nmax_rules = 0").contains("max_rules = 0"));
        let bad_name = parse("[[tenants]]\nname = \"a/b\"\ntargets = [\"*\"]", None).unwrap_err();
        assert!(
            bad_name
                .to_string()
                .contains("tenant name `a/b` is invalid")
        );
    }

    #[test]
    fn a_tenants_rules_are_named_after_it_and_narrowed_to_its_grant() {
        let settings = parse(
            "[[tenants]]\nname = \"t\"\ntargets = [\"web-*\"]\ntarget_labels = { team = \"t\" }\n",
            Some("[[rules]]\nname = \"cpu\"\nbuiltin = \"threshold\"\ntargets = [\"web-0*\"]\n"),
        )
        .unwrap();
        // No rule of the operator's own: the bundled default does not run.
        let names: Vec<&str> = settings.rules.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["t/cpu"]);
        let rule = &settings.rules[0];
        assert_eq!(rule.tenant.as_deref(), Some("t"));
        let patterns: Vec<String> = rule.targets.names.iter().map(ToString::to_string).collect();
        assert_eq!(patterns, ["web-0*"]);
        assert_eq!(rule.targets.labels["team"], "t");
        // Left out, the limits are the grant's.
        assert_eq!(
            rule.limits.max_memory_bytes,
            DEFAULT_MAX_MEMORY_MIB * 1024 * 1024
        );
    }

    #[test]
    fn a_refused_tenant_file_runs_nothing_and_says_why() {
        let settings = parse(
            "[[tenants]]\nname = \"t\"\ntargets = [\"*\"]\n",
            Some("[[rules]]\nname = \"a/b\"\nbuiltin = \"threshold\"\n"),
        )
        .unwrap();
        assert!(settings.rules.is_empty());
        let (tenant, reason) = settings.refused_tenants().next().unwrap();
        assert_eq!(tenant, "t");
        assert!(reason.contains("rule name `a/b` is invalid"), "{reason}");
    }

    #[test]
    fn an_operators_rule_name_cannot_pose_as_a_tenants() {
        let error = parse(
            "[[rules]]\nname = \"t/cpu\"\nbuiltin = \"threshold\"\n",
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(error.contains("kept for tenants' rules"), "{error}");
    }
}
