//! A strict parser for the Prometheus text exposition format (0.0.4) and
//! OpenMetrics text (1.0): what `/metrics` pages of node_exporter and every
//! other exporter serve.
//!
//! Each sample line becomes one [`Metric`]: its name as written (a
//! histogram arrives as its `_bucket`, `_sum` and `_count` series, a
//! summary as its quantiles, `_sum` and `_count`) and its labels as the
//! metric's labels, sorted by name, values unescaped (`\\`, `\"`, `\n`).
//! `# HELP`, `# UNIT` and comments are read past; `# TYPE` is checked;
//! timestamps and OpenMetrics exemplars are checked and dropped (a sample
//! carries the time of the poll).
//!
//! Strict on purpose: a page with one bad line is refused whole, with the
//! line's number and text, instead of being half-read. A rule that
//! silently lost the series after a garbled line would see "all is well"
//! where the exporter is broken. Refused: a line that is not a comment, a
//! sample or blank; a bad name, label, escape, value or timestamp; a label
//! name given twice; a series given twice; a `# TYPE` with an unknown type;
//! anything after OpenMetrics' `# EOF`.
//!
//! Why not a crate: `prometheus-parse` 0.2.5 skips what it cannot read
//! (a garbage line, `a 12x`, an unclosed quote all parse "fine"), and
//! `openmetrics-parser` 0.5.1 is strict but ~9× slower than this parser on
//! a real node_exporter page, LGPL-3.0, folds histograms into typed values
//! that would have to be unfolded again, and reports errors as multi-line
//! pest diagnostics. Figures in BENCHMARKS.md ("Prometheus pages").

use std::collections::HashMap;
use std::fmt;

use crate::runtime::{Label, Metric};

/// Most characters of a refused line quoted in the reason.
pub const QUOTED_CHARS: usize = 80;

/// Why a page was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PageError {
    /// Line `number` (from 1) is not valid exposition text.
    Line {
        /// The line's number, from 1.
        number: usize,
        /// The line, cut to its first [`QUOTED_CHARS`] characters.
        text: String,
        /// What is wrong with it.
        problem: String,
    },
    /// The page has more series than the cap.
    TooManySeries {
        /// The cap.
        max: usize,
    },
}

impl fmt::Display for PageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PageError::Line {
                number,
                text,
                problem,
            } => write!(f, "malformed page at line {number}: {problem}: `{text}`"),
            PageError::TooManySeries { max } => write!(
                f,
                "more than {max} series on the page; at most {max} are taken (is this a federation or kube-state-metrics page? point the target at a smaller one)"
            ),
        }
    }
}

/// Parses a whole page into one metric per series, in page order.
pub fn parse(text: &str, max_series: usize) -> Result<Vec<Metric>, PageError> {
    let mut metrics = Vec::new();
    // Series identity -> the line it was first seen on.
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut eof_at = None;
    for (index, raw) in text.split('\n').enumerate() {
        let number = index + 1;
        let raw = raw.strip_suffix('\r').unwrap_or(raw);
        let fail = |problem: String| PageError::Line {
            number,
            text: quote(raw),
            problem,
        };
        // Indentation is not meaning: Prometheus reads past it too.
        let line = raw.trim_start_matches([' ', '\t']);
        if line.trim_end().is_empty() {
            continue;
        }
        if let Some(eof) = eof_at {
            return Err(fail(format!("text after `# EOF` (line {eof})")));
        }
        if let Some(comment) = line.strip_prefix('#') {
            if comment.trim() == "EOF" {
                eof_at = Some(number);
            } else {
                check_comment(comment).map_err(fail)?;
            }
            continue;
        }
        let metric = parse_sample(line).map_err(fail)?;
        if metrics.len() == max_series {
            return Err(PageError::TooManySeries { max: max_series });
        }
        let identity = series_identity(&metric);
        if let Some(first) = seen.insert(identity, number) {
            return Err(fail(format!(
                "the same series was given on line {first} already"
            )));
        }
        metrics.push(metric);
    }
    Ok(metrics)
}

/// `name{a="1",b="2"}`: the series' identity, its labels escaped as on a
/// page (sorted, since the metric's labels are).
pub fn series_identity(metric: &Metric) -> String {
    let mut text = metric.name.clone();
    if !metric.labels.is_empty() {
        text.push('{');
        for (i, label) in metric.labels.iter().enumerate() {
            if i > 0 {
                text.push(',');
            }
            text.push_str(&label.name);
            text.push_str("=\"");
            for c in label.value.chars() {
                match c {
                    '\\' => text.push_str("\\\\"),
                    '"' => text.push_str("\\\""),
                    '\n' => text.push_str("\\n"),
                    c => text.push(c),
                }
            }
            text.push('"');
        }
        text.push('}');
    }
    text
}

fn quote(line: &str) -> String {
    match line.char_indices().nth(QUOTED_CHARS) {
        Some((cut, _)) => format!("{}…", &line[..cut]),
        None => line.to_string(),
    }
}

const TYPES: [&str; 9] = [
    "counter",
    "gauge",
    "histogram",
    "summary",
    "untyped",
    "unknown",
    "gaugehistogram",
    "stateset",
    "info",
];

/// `# TYPE name type` must be well-formed; `# HELP`, `# UNIT` need a
/// metric name; anything else after `#` is a comment.
fn check_comment(comment: &str) -> Result<(), String> {
    let mut words = comment.split_whitespace();
    let keyword = words.next();
    if !matches!(keyword, Some("TYPE" | "HELP" | "UNIT")) || !comment.starts_with(' ') {
        return Ok(());
    }
    let keyword = keyword.unwrap_or_default();
    let name = words
        .next()
        .ok_or_else(|| format!("`# {keyword}` without a metric name"))?;
    if !is_metric_name(name) {
        return Err(format!("`{name}` is not a valid metric name"));
    }
    if keyword == "TYPE" {
        match words.next() {
            Some(kind) if TYPES.contains(&kind) => {}
            Some(kind) => return Err(format!("unknown metric type `{kind}`")),
            None => return Err("`# TYPE` without a type".into()),
        }
    }
    Ok(())
}

fn is_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// `name{label="value",...} value [timestamp] [# exemplar]`.
fn parse_sample(line: &str) -> Result<Metric, String> {
    let bytes = line.as_bytes();
    let name_end = bytes
        .iter()
        .position(|&b| !(b.is_ascii_alphanumeric() || b == b'_' || b == b':'))
        .unwrap_or(bytes.len());
    let name = &line[..name_end];
    if name.is_empty() || bytes[0].is_ascii_digit() {
        return Err("expected a metric name, a comment or a blank line".into());
    }
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(after) = rest.strip_prefix('{') {
        rest = parse_labels(after, &mut labels)?;
    }
    let rest = match rest.strip_prefix([' ', '\t']) {
        Some(rest) => rest.trim_start_matches([' ', '\t']),
        None if rest.is_empty() => return Err(format!("no value after `{name}`")),
        None => {
            return Err(format!(
                "unexpected `{}` after the metric name",
                first(rest)
            ));
        }
    };
    let mut fields = rest.splitn(2, [' ', '\t']);
    let value_text = fields.next().unwrap_or_default();
    if value_text.is_empty() {
        return Err(format!("no value after `{name}`"));
    }
    let value = parse_value(value_text)?;
    let after = fields
        .next()
        .unwrap_or_default()
        .trim_start_matches([' ', '\t']);
    if !after.is_empty() && !after.starts_with('#') {
        let (timestamp, tail) = after.split_once([' ', '\t']).unwrap_or((after, ""));
        if timestamp.parse::<i64>().is_err() && !timestamp.parse::<f64>().is_ok_and(f64::is_finite)
        {
            return Err(format!("invalid timestamp `{timestamp}`"));
        }
        let tail = tail.trim_start_matches([' ', '\t']);
        if !tail.is_empty() && !tail.starts_with('#') {
            return Err(format!("unexpected `{tail}` after the timestamp"));
        }
        check_exemplar(tail)?;
    } else {
        check_exemplar(after)?;
    }
    labels.sort_by(|a: &Label, b: &Label| a.name.cmp(&b.name));
    Ok(Metric {
        name: name.to_string(),
        value,
        labels,
    })
}

/// An OpenMetrics exemplar: `# {trace_id="..."} 0.5 [timestamp]`.
fn check_exemplar(text: &str) -> Result<(), String> {
    let Some(exemplar) = text.strip_prefix('#') else {
        return Ok(());
    };
    let exemplar = exemplar.trim_start_matches([' ', '\t']);
    let rest = exemplar
        .strip_prefix('{')
        .ok_or("an exemplar must start with `{`")?;
    let mut ignored = Vec::new();
    let rest = parse_labels(rest, &mut ignored)?;
    let mut fields = rest.split_whitespace();
    let value = fields.next().ok_or("an exemplar needs a value")?;
    parse_value(value)?;
    if let Some(timestamp) = fields.next()
        && !timestamp.parse::<f64>().is_ok_and(f64::is_finite)
    {
        return Err(format!("invalid exemplar timestamp `{timestamp}`"));
    }
    if let Some(extra) = fields.next() {
        return Err(format!("unexpected `{extra}` after the exemplar"));
    }
    Ok(())
}

/// Parses `a="1",b="2"}` (after the `{`) into `labels`; returns the text
/// after the `}`.
fn parse_labels<'a>(mut rest: &'a str, labels: &mut Vec<Label>) -> Result<&'a str, String> {
    loop {
        rest = rest.trim_start_matches([' ', '\t']);
        if let Some(after) = rest.strip_prefix('}') {
            return Ok(after);
        }
        let end = rest
            .bytes()
            .position(|b| !(b.is_ascii_alphanumeric() || b == b'_'))
            .unwrap_or(rest.len());
        let name = &rest[..end];
        if name.is_empty() || name.as_bytes()[0].is_ascii_digit() {
            return Err(if rest.is_empty() {
                "the labels are not closed with `}`".into()
            } else {
                format!("expected a label name, found `{}`", first(rest))
            });
        }
        rest = rest[end..].trim_start_matches([' ', '\t']);
        rest = rest
            .strip_prefix('=')
            .ok_or_else(|| format!("expected `=` after label `{name}`"))?
            .trim_start_matches([' ', '\t']);
        rest = rest
            .strip_prefix('"')
            .ok_or_else(|| format!("the value of label `{name}` must be quoted"))?;
        let (value, after) =
            unescape(rest).map_err(|problem| format!("label `{name}`: {problem}"))?;
        if labels.iter().any(|label| label.name == name) {
            return Err(format!("label `{name}` is given twice"));
        }
        labels.push(Label {
            name: name.to_string(),
            value,
        });
        rest = after.trim_start_matches([' ', '\t']);
        if let Some(after) = rest.strip_prefix(',') {
            rest = after;
        } else if !rest.starts_with('}') {
            return Err(if rest.is_empty() {
                "the labels are not closed with `}`".into()
            } else {
                format!("expected `,` or `}}` after label `{name}`")
            });
        }
    }
}

/// Reads a quoted label value up to its closing quote (already past the
/// opening one); returns it unescaped and the text after the quote.
fn unescape(text: &str) -> Result<(String, &str), String> {
    let mut value = String::new();
    let mut chars = text.char_indices();
    while let Some((at, c)) = chars.next() {
        match c {
            '"' => return Ok((value, &text[at + 1..])),
            '\\' => match chars.next() {
                Some((_, '\\')) => value.push('\\'),
                Some((_, '"')) => value.push('"'),
                Some((_, 'n')) => value.push('\n'),
                Some((_, other)) => return Err(format!("invalid escape `\\{other}`")),
                None => break,
            },
            c => value.push(c),
        }
    }
    Err("the quoted value is not closed".into())
}

/// A float as Go's `strconv.ParseFloat` writes them: `1`, `-1.5e-3`,
/// `NaN`, `+Inf`, `-Inf`.
fn parse_value(text: &str) -> Result<f64, String> {
    // Rust also reads "infinity" and "nan" in any case, as Go does; what it
    // refuses (`12x`, `1,5`, ``) is refused here too.
    text.parse::<f64>()
        .map_err(|_| format!("invalid value `{text}`"))
}

fn first(text: &str) -> char {
    text.chars().next().unwrap_or(' ')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(text: &str) -> Vec<String> {
        parse(text, 100)
            .unwrap()
            .iter()
            .map(|metric| format!("{} {}", series_identity(metric), metric.value))
            .collect()
    }

    fn refused(text: &str) -> String {
        parse(text, 100).unwrap_err().to_string()
    }

    #[test]
    fn a_node_exporter_excerpt() {
        let page = r#"# HELP node_cpu_seconds_total Seconds the CPUs spent in each mode.
# TYPE node_cpu_seconds_total counter
node_cpu_seconds_total{cpu="0",mode="idle"} 1.23456789e+06
node_cpu_seconds_total{mode="user",cpu="0"} 4567.5
# HELP node_load1 1m load average.
# TYPE node_load1 gauge
node_load1 0.72

# TYPE http_request_duration_seconds histogram
http_request_duration_seconds_bucket{le="0.1"} 3
http_request_duration_seconds_bucket{le="+Inf"} 5
http_request_duration_seconds_sum 1.5
http_request_duration_seconds_count 5
go_gc_duration_seconds{quantile="0.5"} NaN
"#;
        let got = series(page);
        assert_eq!(
            got,
            [
                r#"node_cpu_seconds_total{cpu="0",mode="idle"} 1234567.89"#,
                r#"node_cpu_seconds_total{cpu="0",mode="user"} 4567.5"#,
                "node_load1 0.72",
                r#"http_request_duration_seconds_bucket{le="0.1"} 3"#,
                r#"http_request_duration_seconds_bucket{le="+Inf"} 5"#,
                "http_request_duration_seconds_sum 1.5",
                "http_request_duration_seconds_count 5",
                r#"go_gc_duration_seconds{quantile="0.5"} NaN"#,
            ]
        );
        let metrics = parse(page, 100).unwrap();
        let labels: Vec<(&str, &str)> = metrics[1]
            .labels
            .iter()
            .map(|l| (l.name.as_str(), l.value.as_str()))
            .collect();
        assert_eq!(labels, [("cpu", "0"), ("mode", "user")], "sorted by name");
    }

    #[test]
    fn escapes_spaces_timestamps_and_openmetrics() {
        let page = "a{path=\"C:\\\\dir\",msg=\"say \\\"hi\\\"\\n\"} -Inf 1700000000000\n\
                    b{ x = \"1\" , } +Inf\r\n\
                    c_total 1 1700000000.5 # {trace_id=\"abc\"} 0.5 1700000000.1\n\
                    d 2 # {} 1\n\
                    # UNIT c_total seconds\n\
                    # just a comment\n\
                    # EOF\n";
        let metrics = parse(page, 100).unwrap();
        assert_eq!(metrics.len(), 4);
        assert_eq!(metrics[0].labels[0].value, "say \"hi\"\n");
        assert_eq!(metrics[0].labels[1].value, "C:\\dir");
        assert_eq!(metrics[0].value, f64::NEG_INFINITY);
        assert_eq!(
            series_identity(&metrics[0]),
            r#"a{msg="say \"hi\"\n",path="C:\\dir"}"#
        );
        assert_eq!(series_identity(&metrics[1]), r#"b{x="1"}"#);
        assert_eq!(
            (metrics[2].name.as_str(), metrics[2].value),
            ("c_total", 1.0)
        );
    }

    #[test]
    fn a_bad_line_names_its_number_and_text() {
        let page = "a 1\n  b 2\nthis is not a metric !!\nc 3\n";
        assert_eq!(
            refused(page),
            "malformed page at line 3: invalid value `is`: `this is not a metric !!`"
        );
        let cases = [
            ("a 12x", "invalid value `12x`"),
            ("a", "no value after `a`"),
            ("a ", "no value after `a`"),
            ("a{b=\"c} 1", "label `b`: the quoted value is not closed"),
            ("a{b=\"\\q\"} 1", "label `b`: invalid escape `\\q`"),
            ("a{b=\"c\"", "the labels are not closed with `}`"),
            ("a{b=c} 1", "the value of label `b` must be quoted"),
            ("a{b=\"1\",b=\"2\"} 1", "label `b` is given twice"),
            ("a{1b=\"1\"} 1", "expected a label name, found `1`"),
            (
                "a{b=\"1\" c=\"2\"} 1",
                "expected `,` or `}` after label `b`",
            ),
            ("a 1 soon", "invalid timestamp `soon`"),
            ("a 1 2 3", "unexpected `3` after the timestamp"),
            ("a 1 # trace", "an exemplar must start with `{`"),
            ("1a 1", "expected a metric name, a comment or a blank line"),
            (
                "<html><body>",
                "expected a metric name, a comment or a blank line",
            ),
            ("# TYPE a gauges", "unknown metric type `gauges`"),
            ("# TYPE a", "`# TYPE` without a type"),
            ("# TYPE 9a gauge", "`9a` is not a valid metric name"),
            ("a-b 1", "unexpected `-` after the metric name"),
        ];
        for (line, problem) in cases {
            let page = format!("ok 1\n{line}\n");
            assert_eq!(
                refused(&page),
                format!("malformed page at line 2: {problem}: `{line}`"),
                "{line}"
            );
        }
    }

    #[test]
    fn a_series_given_twice_and_text_after_eof_are_refused() {
        assert_eq!(
            refused("a{x=\"1\"} 1\nb 1\na{x=\"1\"} 2\n"),
            "malformed page at line 3: the same series was given on line 1 already: `a{x=\"1\"} 2`"
        );
        // Same labels in another order are the same series.
        assert!(refused("a{x=\"1\",y=\"2\"} 1\na{y=\"2\",x=\"1\"} 1\n").contains("line 1"));
        assert_eq!(
            refused("a 1\n# EOF\nb 2\n"),
            "malformed page at line 3: text after `# EOF` (line 2): `b 2`"
        );
    }

    #[test]
    fn a_long_line_is_quoted_cut() {
        let line = format!("x{{y=\"{}", "é".repeat(500));
        let error = parse(&line, 10).unwrap_err();
        let PageError::Line { text, .. } = error else {
            panic!("{error}")
        };
        assert_eq!(text.chars().count(), QUOTED_CHARS + 1);
        assert!(text.ends_with('…'));
    }

    #[test]
    fn the_series_cap_is_a_clear_refusal() {
        let page: String = (0..11).map(|i| format!("s{{i=\"{i}\"}} 1\n")).collect();
        assert_eq!(parse(&page, 11).unwrap().len(), 11);
        assert_eq!(
            parse(&page, 10).unwrap_err(),
            PageError::TooManySeries { max: 10 }
        );
        assert!(
            parse(&page, 10)
                .unwrap_err()
                .to_string()
                .starts_with("more than 10 series")
        );
    }

    #[test]
    fn empty_and_comment_only_pages_have_no_series() {
        assert!(parse("", 10).unwrap().is_empty());
        assert!(parse("\n\n# HELP a b\n", 10).unwrap().is_empty());
    }
}
