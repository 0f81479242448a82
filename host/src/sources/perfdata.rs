//! The output of a Nagios plugin: a status text, then performance data.
//!
//! ```text
//! LOAD OK - total load average: 0.72, 1.64, 1.98|load1=0.720;5.000;10.000;0; load5=1.640;5.000;10.000;0;
//! long text, line 1
//! long text, line 2 | more=1;;;; perfdata='on later lines'=2s
//! ```
//!
//! The first line up to `|` is the status text. Performance data follows
//! that `|`, and also everything after the first `|` of the later lines
//! (the plugin guidelines' multi-line form). Each item is
//! `'label'=value[UOM];[warn];[crit];[min];[max]`: a label with spaces is
//! quoted and `''` in it is one `'`; trailing fields may be left out. A
//! value of `U` (undetermined) is skipped. `warn` and `crit` are Nagios
//! ranges (`10`, `10:`, `~:10`, `@10:20`); only a plain number (alert above
//! it) is a value a rule can compare with, so only those are kept.
//!
//! Strict like the `/metrics` parser: an item that does not follow the
//! form refuses the whole output, naming the item, rather than dropping
//! it and letting a rule believe the value is gone.

/// One performance data item.
#[derive(Debug, Clone, PartialEq)]
pub struct PerfValue {
    /// The label, unquoted: `load1`, `/`, `time to first byte`.
    pub label: String,
    /// The value.
    pub value: f64,
    /// Its unit of measure (`s`, `ms`, `%`, `B`, `KB`, `c`, ...); may be empty.
    pub unit: String,
    /// The warning threshold, when it is a plain number.
    pub warn: Option<f64>,
    /// The critical threshold, when it is a plain number.
    pub crit: Option<f64>,
    /// The smallest possible value.
    pub min: Option<f64>,
    /// The largest possible value.
    pub max: Option<f64>,
}

/// A plugin's output, parsed.
#[derive(Debug, Clone, PartialEq)]
pub struct PluginOutput<'a> {
    /// The first line up to `|`, trimmed.
    pub text: &'a str,
    /// Every performance data item, in order.
    pub perfdata: Vec<PerfValue>,
}

/// Parses a plugin's stdout.
pub fn parse_output(output: &str) -> Result<PluginOutput<'_>, String> {
    let (first, rest) = output.split_once('\n').unwrap_or((output, ""));
    let first = first.strip_suffix('\r').unwrap_or(first);
    let (text, mut perfdata) = match first.split_once('|') {
        Some((text, perfdata)) => (text, parse_perfdata(perfdata)?),
        None => (first, Vec::new()),
    };
    if let Some((_, more)) = rest.split_once('|') {
        perfdata.extend(parse_perfdata(more)?);
    }
    Ok(PluginOutput {
        text: text.trim(),
        perfdata,
    })
}

/// Parses space-separated performance data items.
pub fn parse_perfdata(text: &str) -> Result<Vec<PerfValue>, String> {
    let mut items = Vec::new();
    let mut rest = text;
    loop {
        rest = rest.trim_start();
        if rest.is_empty() {
            return Ok(items);
        }
        let (label, after) = label(rest)?;
        let end = after.find(char::is_whitespace).unwrap_or(after.len());
        let (fields, after) = after.split_at(end);
        let item = |problem: String| {
            let raw = &rest[..rest.len() - after.len()];
            format!("performance data `{raw}`: {problem}")
        };
        if let Some(value) = item_value(label, fields).map_err(item)? {
            items.push(value);
        }
        rest = after;
    }
}

/// Reads `'label'=` or `label=`; returns the label and the text after `=`.
fn label(text: &str) -> Result<(String, &str), String> {
    let cut = |text: &str| text.chars().take(40).collect::<String>();
    if let Some(quoted) = text.strip_prefix('\'') {
        let mut label = String::new();
        let mut chars = quoted.char_indices();
        while let Some((at, c)) = chars.next() {
            if c != '\'' {
                label.push(c);
                continue;
            }
            if quoted[at + 1..].starts_with('\'') {
                label.push('\'');
                chars.next();
                continue;
            }
            return match quoted[at + 1..].strip_prefix('=') {
                Some(after) if !label.is_empty() => Ok((label, after)),
                Some(_) => Err(format!("performance data `{}`: empty label", cut(text))),
                None => Err(format!(
                    "performance data `{}`: expected `=` after the quoted label",
                    cut(text)
                )),
            };
        }
        return Err(format!(
            "performance data `{}`: the quoted label is not closed",
            cut(text)
        ));
    }
    let end = text.find(char::is_whitespace).unwrap_or(text.len());
    match text[..end].split_once('=') {
        Some(("", _)) => Err(format!("performance data `{}`: empty label", &text[..end])),
        Some((label, _)) => Ok((label.to_string(), &text[label.len() + 1..])),
        None => Err(format!(
            "performance data `{}` is not 'label'=value[UOM];warn;crit;min;max",
            &text[..end]
        )),
    }
}

/// `value[UOM];warn;crit;min;max` of `label`; `None` for a `U` value.
fn item_value(label: String, fields: &str) -> Result<Option<PerfValue>, String> {
    let mut parts = fields.split(';');
    let first = parts.next().unwrap_or_default();
    if first == "U" {
        return Ok(None);
    }
    let (value, unit) = number_and_unit(first)?;
    let rest: Vec<&str> = parts.collect();
    if rest.len() > 4 {
        return Err("more than value;warn;crit;min;max".into());
    }
    let field = |index: usize| rest.get(index).copied().unwrap_or_default();
    Ok(Some(PerfValue {
        label,
        value,
        unit: unit.to_string(),
        warn: threshold(field(0), "warn")?,
        crit: threshold(field(1), "crit")?,
        min: plain(field(2), "min")?,
        max: plain(field(3), "max")?,
    }))
}

/// Splits `0.720s` into 0.72 and `s`.
fn number_and_unit(text: &str) -> Result<(f64, &str), String> {
    let numeric = text
        .find(|c: char| !(c.is_ascii_digit() || "+-.eE".contains(c)))
        .unwrap_or(text.len());
    // The longest prefix that is a number ("1e" in "1eB" is not).
    let Some((value, end)) = (1..=numeric)
        .rev()
        .find_map(|end| text[..end].parse::<f64>().ok().map(|v| (v, end)))
    else {
        return Err(format!("invalid value `{text}`"));
    };
    let unit = &text[end..];
    if !unit.chars().all(|c| c.is_ascii_alphabetic() || c == '%') {
        return Err(format!("invalid unit `{unit}`"));
    }
    Ok((value, unit))
}

fn plain(text: &str, what: &str) -> Result<Option<f64>, String> {
    if text.is_empty() {
        return Ok(None);
    }
    text.parse::<f64>()
        .map(Some)
        .map_err(|_| format!("invalid {what} `{text}`"))
}

/// A Nagios range: `[@][start:][end]`, `start` may be `~`. A plain number
/// is returned; any other valid range is `None`.
fn threshold(text: &str, what: &str) -> Result<Option<f64>, String> {
    if let Ok(value) = plain(text, what) {
        return Ok(value);
    }
    let range = text.strip_prefix('@').unwrap_or(text);
    let valid = match range.split_once(':') {
        Some((start, end)) => {
            (start.is_empty() || start == "~" || start.parse::<f64>().is_ok())
                && (end.is_empty() || end.parse::<f64>().is_ok())
        }
        None => range.parse::<f64>().is_ok(),
    };
    if valid {
        Ok(None)
    } else {
        Err(format!("invalid {what} range `{text}`"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn perf(label: &str, value: f64, unit: &str) -> PerfValue {
        PerfValue {
            label: label.into(),
            value,
            unit: unit.into(),
            warn: None,
            crit: None,
            min: None,
            max: None,
        }
    }

    #[test]
    fn check_load_and_check_disk_as_they_print() {
        let load = parse_output(
            "LOAD OK - total load average: 0.72, 1.64, 1.98|load1=0.720;5.000;10.000;0; load5=1.640;5.000;10.000;0; load15=1.980;5.000;10.000;0; \n",
        )
        .unwrap();
        assert_eq!(load.text, "LOAD OK - total load average: 0.72, 1.64, 1.98");
        assert_eq!(
            load.perfdata[0],
            PerfValue {
                warn: Some(5.0),
                crit: Some(10.0),
                min: Some(0.0),
                ..perf("load1", 0.72, "")
            }
        );
        assert_eq!(load.perfdata.len(), 3);

        let disk = parse_output(
            "DISK OK - free space: / 71683MiB (77% inode=97%);| /=22405971968B;243497277849;257024904396;0;270552530944\n",
        )
        .unwrap();
        assert_eq!(
            disk.text,
            "DISK OK - free space: / 71683MiB (77% inode=97%);"
        );
        assert_eq!(
            disk.perfdata,
            [PerfValue {
                warn: Some(243497277849.0),
                crit: Some(257024904396.0),
                min: Some(0.0),
                max: Some(270552530944.0),
                ..perf("/", 22405971968.0, "B")
            }]
        );
    }

    #[test]
    fn quoted_labels_units_and_multi_line_perfdata() {
        let output = "HTTP OK: 200 | 'time to first byte'=0.5s;;; 'it''s'=3%\n\
                      long text\n\
                      more text | size=10KB;;;0 'c'=5c\n\
                      rows=7\n";
        let parsed = parse_output(output).unwrap();
        assert_eq!(parsed.text, "HTTP OK: 200");
        let got: Vec<(&str, f64, &str)> = parsed
            .perfdata
            .iter()
            .map(|p| (p.label.as_str(), p.value, p.unit.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("time to first byte", 0.5, "s"),
                ("it's", 3.0, "%"),
                ("size", 10.0, "KB"),
                ("c", 5.0, "c"),
                ("rows", 7.0, ""),
            ]
        );
        assert_eq!(parsed.perfdata[2].min, Some(0.0));
    }

    #[test]
    fn no_perfdata_undetermined_values_and_ranges() {
        let plain = parse_output("PROCS OK: 3 processes").unwrap();
        assert_eq!(
            (plain.text, plain.perfdata.len()),
            ("PROCS OK: 3 processes", 0)
        );
        assert_eq!(parse_output("").unwrap().text, "");

        let items = parse_perfdata("a=U;1;2 b=-1.5e3ms;10:;@5:20;; c=1;~:10;5").unwrap();
        assert_eq!(items.len(), 2, "a=U is skipped");
        assert_eq!(items[0], perf("b", -1500.0, "ms"));
        assert_eq!(items[1].crit, Some(5.0));
        assert_eq!(items[1].warn, None, "a range is not a plain number");
    }

    #[test]
    fn malformed_items_are_named() {
        let cases = [
            (
                "load1",
                "performance data `load1` is not 'label'=value[UOM];warn;crit;min;max",
            ),
            ("=1", "performance data `=1`: empty label"),
            (
                "'x=1",
                "performance data `'x=1`: the quoted label is not closed",
            ),
            (
                "'x' =1",
                "performance data `'x' =1`: expected `=` after the quoted label",
            ),
            ("a=", "performance data `a=`: invalid value ``"),
            ("a=0,72", "performance data `a=0,72`: invalid unit `,72`"),
            ("a=x", "performance data `a=x`: invalid value `x`"),
            ("a=1;x", "performance data `a=1;x`: invalid warn range `x`"),
            (
                "a=1;;;zero",
                "performance data `a=1;;;zero`: invalid min `zero`",
            ),
            (
                "a=1;;;;;",
                "performance data `a=1;;;;;`: more than value;warn;crit;min;max",
            ),
        ];
        for (text, reason) in cases {
            assert_eq!(parse_perfdata(text).unwrap_err(), reason, "{text}");
        }
        assert!(parse_output("OK | a=1 b=oops\n").is_err());
        assert!(parse_output("OK\nlong | a=1 b=oops\n").is_err());
    }
}
