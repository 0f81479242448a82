//! Operator-declared actions: the `[actions.NAME]` tables of the host config,
//! parsed once into typed [`ActionSpec`]s.
//!
//! ```toml
//! [actions.restart]
//! command = ["/usr/bin/systemctl", "restart", "{service}"]  # argv, never a shell line
//! params = { service = { pattern = "nginx|web" } }          # whole value must match
//! timeout = "10s"                                           # default 10s
//! cooldown = "5m"                                           # per target; default none
//! limit = { count = 3, window = "10m" }                     # per action; default none
//! breaker = { failures = 3, runs = 10, window = "1h" }      # per action; default none
//! mode = "enforce"                                          # default: the global mode
//! allowed_rules = ["threshold"]                             # default: no rule may ask
//!
//! [actions.page]
//! http = { method = "POST", url = "http://pager.local/v1/{team}", headers = { "content-type" = "application/json" }, body = '{"team": "{team}"}' }
//! params = { team = { values = ["db", "web"] } }
//! ```
//!
//! Guarantees, checked here so that nothing is discovered at run time:
//! - every `{placeholder}` names a declared param, and every declared param
//!   is used somewhere (a typo fails the config, it does not pass silently);
//! - the program (`command[0]`) is fixed by the operator: it may not hold a
//!   placeholder; a URL's template parses as `http://` or `https://`;
//! - patterns compile and are anchored: `nginx|web` accepts exactly `nginx`
//!   or `web`, never `nginx; rm -rf /`;
//! - durations are typed; counts are at least 1.
//!
//! A placeholder is `{` + a param name (`[A-Za-z_][A-Za-z0-9_]*`) + `}`;
//! any other brace is literal text, so JSON bodies need no escaping. There is
//! no escape for a literal `{name}` that is not a param: such text is refused.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::Duration;

use regex::Regex;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde::{Deserialize, Serialize};

use crate::duration::TextDuration;
use crate::names::{ActionName, Syntax};

/// How long an action may run when it does not set `timeout`.
pub const DEFAULT_ACTION_TIMEOUT: Duration = Duration::from_secs(10);

/// Whether approved actions are executed or only recorded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Decide and record, do not execute (the default everywhere).
    #[default]
    DryRun,
    /// Execute what the gate approves.
    Enforce,
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::DryRun => "dry-run",
            Mode::Enforce => "enforce",
        })
    }
}

/// One validated action.
#[derive(Debug, Clone, PartialEq)]
pub struct ActionSpec {
    /// The name rules request it by (`restart`).
    pub name: ActionName,
    /// What runs.
    pub invocation: InvocationSpec,
    /// The params a request must give, each with what it accepts.
    pub params: BTreeMap<String, ParamSpec>,
    /// The run is stopped (command killed, request dropped) after this long.
    pub timeout: Duration,
    /// Quiet time per target after a run before the next one for that target.
    pub cooldown: Duration,
    /// At most this many runs of the action within a sliding window.
    pub limit: Option<RateLimit>,
    /// When to stop running the action altogether for a while.
    pub breaker: Option<BreakerPolicy>,
    /// Dry-run or enforce (already resolved against the global mode).
    pub mode: Mode,
    /// Rules that may request it. Empty: none may.
    pub allowed_rules: BTreeSet<String>,
}

/// What an action runs, with placeholders still in it.
#[derive(Debug, Clone, PartialEq)]
pub enum InvocationSpec {
    /// A process started directly from an argv (no shell).
    Command {
        /// `argv[0]`: fixed by the operator, never a placeholder.
        program: String,
        /// The other elements; each becomes exactly one argv element.
        args: Vec<Template>,
    },
    /// One HTTP request.
    Http(HttpSpec),
}

/// An HTTP action's request.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpSpec {
    /// `POST`, `PUT`, ...
    pub method: reqwest::Method,
    /// The URL; param values are percent-encoded into it.
    pub url: Template,
    /// Fixed headers (no placeholders).
    pub headers: HeaderMap,
    /// The body; param values are inserted as they are.
    pub body: Option<Template>,
}

/// What a param accepts.
#[derive(Debug, Clone)]
pub enum ParamSpec {
    /// Values the whole of which match this regex.
    Pattern {
        /// The pattern as the operator wrote it.
        source: String,
        /// `^(?:source)$`, compiled.
        regex: Regex,
    },
    /// Exactly one of these values.
    Values(BTreeSet<String>),
}

impl PartialEq for ParamSpec {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (ParamSpec::Pattern { source: a, .. }, ParamSpec::Pattern { source: b, .. }) => a == b,
            (ParamSpec::Values(a), ParamSpec::Values(b)) => a == b,
            _ => false,
        }
    }
}

impl ParamSpec {
    /// Whether `value` is acceptable.
    pub fn accepts(&self, value: &str) -> bool {
        match self {
            ParamSpec::Pattern { regex, .. } => regex.is_match(value),
            ParamSpec::Values(values) => values.contains(value),
        }
    }
}

impl fmt::Display for ParamSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParamSpec::Pattern { source, .. } => write!(f, "the pattern `{source}`"),
            ParamSpec::Values(values) => {
                let list: Vec<String> = values.iter().map(|v| format!("`{v}`")).collect();
                write!(f, "one of {}", list.join(", "))
            }
        }
    }
}

/// "At most `count` runs within `window`", per action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// Most runs in any window.
    pub count: u32,
    /// The sliding window.
    pub window: Duration,
}

/// "After `failures` failures or `runs` runs within `window`, stop": the
/// breaker then stays open (every request refused) for one `window`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerPolicy {
    /// Failed or timed-out runs that open it.
    pub failures: Option<u32>,
    /// Finished runs of any result that open it.
    pub runs: Option<u32>,
    /// Where both are counted, and how long it stays open.
    pub window: Duration,
}

/// Text with `{param}` placeholders, split once at config time so that a
/// value is never scanned for placeholders itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    segments: Vec<Segment>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Param(String),
}

impl Template {
    /// Splits `text` into literal text and `{name}` placeholders.
    pub fn parse(text: &str) -> Template {
        let mut segments = Vec::new();
        let mut literal = String::new();
        let mut rest = text;
        while let Some(open) = rest.find('{') {
            literal.push_str(&rest[..open]);
            let after = &rest[open + 1..];
            match after.find('}') {
                Some(close) if Syntax::Identifier.accepts(&after[..close]) => {
                    if !literal.is_empty() {
                        segments.push(Segment::Literal(std::mem::take(&mut literal)));
                    }
                    segments.push(Segment::Param(after[..close].to_string()));
                    rest = &after[close + 1..];
                }
                _ => {
                    literal.push('{');
                    rest = after;
                }
            }
        }
        literal.push_str(rest);
        if !literal.is_empty() {
            segments.push(Segment::Literal(literal));
        }
        Template { segments }
    }

    /// The param names it uses, in order (with repeats).
    pub fn params(&self) -> impl Iterator<Item = &str> {
        self.segments.iter().filter_map(|segment| match segment {
            Segment::Param(name) => Some(name.as_str()),
            Segment::Literal(_) => None,
        })
    }

    /// The text with each placeholder replaced by `encode(value)`, in one
    /// pass: a value that itself looks like `{name}` stays as it is. A
    /// placeholder without a value (only possible when called outside the
    /// gate) renders as empty text.
    pub fn render(&self, values: &BTreeMap<String, String>, encode: fn(&str) -> String) -> String {
        let mut out = String::new();
        for segment in &self.segments {
            match segment {
                Segment::Literal(text) => out.push_str(text),
                Segment::Param(name) => {
                    out.push_str(&encode(values.get(name).map_or("", String::as_str)))
                }
            }
        }
        out
    }
}

impl fmt::Display for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for segment in &self.segments {
            match segment {
                Segment::Literal(text) => f.write_str(text)?,
                Segment::Param(name) => write!(f, "{{{name}}}")?,
            }
        }
        Ok(())
    }
}

/// One `[actions.NAME]` table as written. Embed it in a config struct
/// (`BTreeMap<String, Spanned<ActionConfig>>` keeps line numbers) and call
/// [`validate`](Self::validate), or use [`parse_actions`] on a whole table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActionConfig {
    /// `["/usr/bin/systemctl", "restart", "{service}"]`
    command: Option<Vec<String>>,
    /// `{ method = "POST", url = "http://...", headers = {..}, body = "..." }`
    http: Option<HttpConfig>,
    /// `{ service = { pattern = "nginx|web" }, team = { values = ["db"] } }`
    #[serde(default)]
    params: BTreeMap<String, ParamConfig>,
    /// `"10s"`
    timeout: Option<TextDuration>,
    /// `"5m"`
    cooldown: Option<TextDuration>,
    /// `{ count = 3, window = "10m" }`
    limit: Option<LimitConfig>,
    /// `{ failures = 3, runs = 10, window = "1h" }`
    breaker: Option<BreakerConfig>,
    /// `"dry-run"` or `"enforce"`
    mode: Option<Mode>,
    /// `["threshold"]`
    #[serde(default)]
    allowed_rules: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct HttpConfig {
    method: String,
    url: String,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    body: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct ParamConfig {
    pattern: Option<String>,
    values: Option<Vec<String>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitConfig {
    count: u32,
    window: TextDuration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct BreakerConfig {
    failures: Option<u32>,
    runs: Option<u32>,
    window: TextDuration,
}

/// `duration`, unless it is zero: a timeout or window of zero makes no sense
/// (a `cooldown` of zero does, and is not checked).
fn positive(field: &str, TextDuration(duration): TextDuration) -> Result<Duration, String> {
    if duration.is_zero() {
        Err(format!("`{field}` must be longer than zero"))
    } else {
        Ok(duration)
    }
}

fn at_least_one(field: &str, count: u32) -> Result<u32, String> {
    if count == 0 {
        Err(format!("`{field}` must be at least 1"))
    } else {
        Ok(count)
    }
}

impl ActionConfig {
    /// Checks the action and builds its spec; `global` is the mode it gets
    /// when it sets none. The error names the field; the caller adds the
    /// action's name and location.
    pub fn validate(self, name: &str, global: Mode) -> Result<ActionSpec, String> {
        if !Syntax::Word.accepts(name) {
            return Err("the name must be letters, digits, `_` or `-`".into());
        }
        let params = self
            .params
            .into_iter()
            .map(|(param, config)| {
                let spec = config
                    .validate(&param)
                    .map_err(|error| format!("params.{param}: {error}"))?;
                Ok((param, spec))
            })
            .collect::<Result<BTreeMap<_, _>, String>>()?;

        let invocation = match (self.command, self.http) {
            (Some(argv), None) => command_spec(argv)?,
            (None, Some(http)) => InvocationSpec::Http(http.validate()?),
            (Some(_), Some(_)) => return Err("takes `command` or `http`, not both".into()),
            (None, None) => {
                return Err("needs `command` (an argv array, e.g. [\"/usr/bin/systemctl\", \"restart\", \"{service}\"]) or `http`".into());
            }
        };
        check_placeholders(&invocation, &params)?;

        let timeout = match self.timeout {
            Some(timeout) => positive("timeout", timeout)?,
            None => DEFAULT_ACTION_TIMEOUT,
        };
        let limit = self
            .limit
            .map(|limit| {
                Ok::<_, String>(RateLimit {
                    count: at_least_one("limit.count", limit.count)?,
                    window: positive("limit.window", limit.window)?,
                })
            })
            .transpose()?;
        let breaker = self
            .breaker
            .map(|breaker| {
                if breaker.failures.is_none() && breaker.runs.is_none() {
                    return Err("`breaker` needs `failures`, `runs` or both".to_string());
                }
                Ok(BreakerPolicy {
                    failures: breaker
                        .failures
                        .map(|n| at_least_one("breaker.failures", n))
                        .transpose()?,
                    runs: breaker
                        .runs
                        .map(|n| at_least_one("breaker.runs", n))
                        .transpose()?,
                    window: positive("breaker.window", breaker.window)?,
                })
            })
            .transpose()?;
        for rule in &self.allowed_rules {
            if rule.is_empty() {
                return Err("`allowed_rules` holds an empty rule name".into());
            }
        }
        Ok(ActionSpec {
            name: name.into(),
            invocation,
            params,
            timeout,
            cooldown: self.cooldown.map_or(Duration::ZERO, TextDuration::get),
            limit,
            breaker,
            mode: self.mode.unwrap_or(global),
            allowed_rules: self.allowed_rules.into_iter().collect(),
        })
    }
}

impl ParamConfig {
    fn validate(self, name: &str) -> Result<ParamSpec, String> {
        if !Syntax::Identifier.accepts(name) {
            return Err(
                "a param name is letters, digits and `_`, not starting with a digit".into(),
            );
        }
        match (self.pattern, self.values) {
            (Some(source), None) => {
                let regex = Regex::new(&format!("^(?:{source})$"))
                    .map_err(|error| format!("`pattern` is not a valid regex: {error}"))?;
                Ok(ParamSpec::Pattern { source, regex })
            }
            (None, Some(values)) if values.is_empty() => {
                Err("`values` is empty: no value would be accepted".into())
            }
            (None, Some(values)) => Ok(ParamSpec::Values(values.into_iter().collect())),
            (Some(_), Some(_)) => Err("takes `pattern` or `values`, not both".into()),
            (None, None) => Err(
                "needs `pattern` (a regex the whole value must match) or `values` (a list)".into(),
            ),
        }
    }
}

fn command_spec(argv: Vec<String>) -> Result<InvocationSpec, String> {
    let mut argv = argv.into_iter();
    let program = argv.next().ok_or("`command` is empty")?;
    if program.is_empty() {
        return Err("`command[0]` (the program) is empty".into());
    }
    if Template::parse(&program).params().next().is_some() {
        return Err(format!(
            "`command[0]` is the program and may not hold a placeholder: `{program}`"
        ));
    }
    Ok(InvocationSpec::Command {
        program,
        args: argv.map(|arg| Template::parse(&arg)).collect(),
    })
}

impl HttpConfig {
    fn validate(self) -> Result<HttpSpec, String> {
        let method = reqwest::Method::from_bytes(self.method.as_bytes())
            .map_err(|_| format!("`http.method` `{}` is not an HTTP method", self.method))?;
        let url = Template::parse(&self.url);
        // With every placeholder filled in, the URL must parse.
        let sample = url.render(&BTreeMap::new(), |_| "x".into());
        let parsed = reqwest::Url::parse(&sample)
            .map_err(|error| format!("`http.url` `{}` is not a URL: {error}", self.url))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(format!(
                "`http.url` `{}` must be http:// or https://",
                self.url
            ));
        }
        let mut headers = HeaderMap::new();
        for (name, value) in self.headers {
            if Template::parse(&value).params().next().is_some() {
                return Err(format!(
                    "`http.headers.{name}` may not hold a placeholder; put params in the url or the body"
                ));
            }
            let header = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| format!("`http.headers.{name}` is not a valid header name"))?;
            let value = HeaderValue::from_str(&value)
                .map_err(|_| format!("`http.headers.{name}` has an invalid value"))?;
            headers.insert(header, value);
        }
        Ok(HttpSpec {
            method,
            url,
            headers,
            body: self.body.as_deref().map(Template::parse),
        })
    }
}

/// Every placeholder names a declared param; every param is used.
fn check_placeholders(
    invocation: &InvocationSpec,
    params: &BTreeMap<String, ParamSpec>,
) -> Result<(), String> {
    let fields: Vec<(String, &Template)> = match invocation {
        InvocationSpec::Command { args, .. } => args
            .iter()
            .enumerate()
            .map(|(i, arg)| (format!("command[{}]", i + 1), arg))
            .collect(),
        InvocationSpec::Http(http) => std::iter::once(("http.url".to_string(), &http.url))
            .chain(http.body.iter().map(|body| ("http.body".to_string(), body)))
            .collect(),
    };
    let mut used = BTreeSet::new();
    for (field, template) in &fields {
        for param in template.params() {
            if !params.contains_key(param) {
                let declared: Vec<&str> = params.keys().map(String::as_str).collect();
                return Err(format!(
                    "`{field}` uses `{{{param}}}`, which is not a declared param (declared: {})\nhint: declare it under `params`",
                    if declared.is_empty() {
                        "none".to_string()
                    } else {
                        declared.join(", ")
                    }
                ));
            }
            used.insert(param);
        }
    }
    if let Some(unused) = params.keys().find(|param| !used.contains(param.as_str())) {
        return Err(format!(
            "param `{unused}` is declared but no placeholder `{{{unused}}}` uses it"
        ));
    }
    Ok(())
}

/// Parses every `[actions.NAME]` table of `table` (the value of the config's
/// `actions` key); actions without a `mode` get `global`. Errors read
/// ``action `restart`: params.service: `pattern` is not a valid regex: ...``.
pub fn parse_actions(
    table: &toml::Table,
    global: Mode,
) -> Result<BTreeMap<ActionName, ActionSpec>, String> {
    table
        .iter()
        .map(|(name, value)| {
            let fail = |error: String| format!("action `{name}`: {error}");
            let config: ActionConfig = value
                .clone()
                .try_into()
                .map_err(|error: toml::de::Error| fail(error.message().trim_end().to_string()))?;
            let spec = config.validate(name, global).map_err(fail)?;
            Ok((spec.name.clone(), spec))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn parse(text: &str) -> Result<BTreeMap<ActionName, ActionSpec>, String> {
        parse_actions(&text.parse::<toml::Table>().unwrap(), Mode::DryRun)
    }

    #[test]
    fn a_full_command_action_parses_into_typed_values() {
        let actions = parse(
            r#"
            [restart]
            command = ["/usr/bin/systemctl", "restart", "{service}", "--reason=x{service}y"]
            params = { service = { pattern = "nginx|web" } }
            timeout = "3s"
            cooldown = "5m"
            limit = { count = 3, window = "10m" }
            breaker = { failures = 2, runs = 10, window = "1h" }
            mode = "enforce"
            allowed_rules = ["threshold"]
            "#,
        )
        .unwrap();
        let spec = &actions["restart"];
        assert_eq!(spec.name, "restart");
        let InvocationSpec::Command { program, args } = &spec.invocation else {
            panic!("a command")
        };
        assert_eq!(program, "/usr/bin/systemctl");
        assert_eq!(args[1].to_string(), "{service}");
        assert_eq!(args[2].params().collect::<Vec<_>>(), ["service"]);
        assert_eq!(spec.timeout, Duration::from_secs(3));
        assert_eq!(spec.cooldown, Duration::from_secs(300));
        assert_eq!(
            spec.limit,
            Some(RateLimit {
                count: 3,
                window: Duration::from_secs(600)
            })
        );
        assert_eq!(spec.breaker.unwrap().failures, Some(2));
        assert_eq!(spec.mode, Mode::Enforce);
        assert!(spec.allowed_rules.contains("threshold"));
        let service = &spec.params["service"];
        assert!(service.accepts("nginx") && service.accepts("web"));
        for bad in ["nginx; rm -rf /", "xnginx", "nginx\n", "web web", ""] {
            assert!(!service.accepts(bad), "{bad:?} must not match");
        }
    }

    #[test]
    fn defaults_are_safe() {
        let actions = parse(
            r#"
            [noop]
            command = ["/bin/true"]
            "#,
        )
        .unwrap();
        let spec = &actions["noop"];
        assert_eq!(spec.timeout, DEFAULT_ACTION_TIMEOUT);
        assert_eq!(spec.cooldown, Duration::ZERO);
        assert_eq!(spec.mode, Mode::DryRun);
        assert!(spec.allowed_rules.is_empty());
        assert_eq!((spec.limit, spec.breaker), (None, None));
        let table = "[noop]\ncommand = [\"/bin/true\"]\n"
            .parse::<toml::Table>()
            .unwrap();
        let enforce = parse_actions(&table, Mode::Enforce).unwrap();
        assert_eq!(enforce["noop"].mode, Mode::Enforce);
    }

    #[test]
    fn an_http_action_parses() {
        let actions = parse(
            r#"
            [page]
            http = { method = "POST", url = "https://pager.local/v1/{team}?x=1", headers = { "content-type" = "application/json" }, body = '{"team": "{team}"}' }
            params = { team = { values = ["db", "web"] } }
            "#,
        )
        .unwrap();
        let InvocationSpec::Http(http) = &actions["page"].invocation else {
            panic!("http")
        };
        assert_eq!(http.method, reqwest::Method::POST);
        assert_eq!(http.headers["content-type"], "application/json");
        let body = http.body.as_ref().unwrap();
        assert_eq!(body.params().collect::<Vec<_>>(), ["team"]);
        assert_eq!(body.to_string(), r#"{"team": "{team}"}"#);
    }

    #[test]
    fn templates_render_in_one_pass() {
        let template = Template::parse("{a}-{b}{{c}}{not a param}{");
        let values = BTreeMap::from([
            ("a".to_string(), "{b}".to_string()),
            ("b".to_string(), "2".to_string()),
        ]);
        assert_eq!(
            template.render(&values, str::to_string),
            "{b}-2{}{not a param}{"
        );
        assert_eq!(template.params().collect::<Vec<_>>(), ["a", "b", "c"]);
    }

    #[test]
    fn errors_name_the_action_and_the_field() {
        let error = |text: &str| parse(text).unwrap_err();
        let cases = [
            (
                "[a]\ncomand = [\"x\"]\n",
                "action `a`: unknown field `comand`",
            ),
            ("[a]\n", "action `a`: needs `command`"),
            (
                "[a]\ncommand = [\"x\"]\nhttp = { method = \"GET\", url = \"http://h/\" }\n",
                "action `a`: takes `command` or `http`, not both",
            ),
            ("[a]\ncommand = []\n", "action `a`: `command` is empty"),
            (
                "[a]\ncommand = [\"{p}\"]\nparams = { p = { values = [\"x\"] } }\n",
                "action `a`: `command[0]` is the program and may not hold a placeholder",
            ),
            (
                "[a]\ncommand = [\"x\", \"{svc}\"]\nparams = { service = { values = [\"x\"] } }\n",
                "action `a`: `command[1]` uses `{svc}`, which is not a declared param (declared: service)",
            ),
            (
                "[a]\ncommand = [\"x\"]\nparams = { service = { values = [\"x\"] } }\n",
                "action `a`: param `service` is declared but no placeholder",
            ),
            (
                "[a]\ncommand = [\"x\", \"{p}\"]\nparams = { p = { pattern = \"(\" } }\n",
                "action `a`: params.p: `pattern` is not a valid regex",
            ),
            (
                "[a]\ncommand = [\"x\", \"{p}\"]\nparams = { p = { } }\n",
                "action `a`: params.p: needs `pattern`",
            ),
            (
                "[a]\ncommand = [\"x\", \"{p}\"]\nparams = { p = { values = [] } }\n",
                "action `a`: params.p: `values` is empty",
            ),
            (
                "[a]\ncommand = [\"x\"]\ntimeout = \"soon\"\n",
                "action `a`: invalid duration `soon`",
            ),
            (
                "[a]\ncommand = [\"x\"]\ntimeout = \"0s\"\n",
                "action `a`: `timeout` must be longer than zero",
            ),
            (
                "[a]\ncommand = [\"x\"]\nlimit = { count = 0, window = \"1m\" }\n",
                "action `a`: `limit.count` must be at least 1",
            ),
            (
                "[a]\ncommand = [\"x\"]\nbreaker = { window = \"1m\" }\n",
                "action `a`: `breaker` needs `failures`, `runs` or both",
            ),
            (
                "[a]\ncommand = [\"x\"]\nmode = \"yolo\"\n",
                "action `a`: unknown variant `yolo`",
            ),
            (
                "[a]\nhttp = { method = \"POST\", url = \"ftp://h/{p}\" }\nparams = { p = { values = [\"x\"] } }\n",
                "action `a`: `http.url` `ftp://h/{p}` must be http:// or https://",
            ),
            (
                "[a]\nhttp = { method = \"POST\", url = \"http://h/\", headers = { x = \"{p}\" }, body = \"{p}\" }\nparams = { p = { values = [\"x\"] } }\n",
                "action `a`: `http.headers.x` may not hold a placeholder",
            ),
            (
                "[\"bad name\"]\ncommand = [\"x\"]\n",
                "action `bad name`: the name must be",
            ),
        ];
        for (text, expected) in cases {
            let error = error(text);
            assert!(error.starts_with(expected), "{text}\n=> {error}");
        }
    }
}
