//! Durations in config files are text (`"250ms"`, `"5s"`, `"1m 30s"`),
//! parsed once into a [`Duration`]: never a bare number with a unit guessed
//! from the field's name.

use std::time::Duration;

use serde::Deserialize;

/// A duration written as text, parsed by `humantime`. Zero parses: each
/// config section refuses it where it makes no sense (the host's own
/// settings refuse it outright, an action's `cooldown` allows it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct TextDuration(pub Duration);

impl TextDuration {
    /// The duration.
    pub fn get(self) -> Duration {
        self.0
    }
}

impl std::str::FromStr for TextDuration {
    type Err = String;

    /// Parses `5s`, `250ms`, `1m 30s`; the error quotes the text and gives
    /// an example.
    fn from_str(text: &str) -> Result<Self, String> {
        humantime::parse_duration(text)
            .map(TextDuration)
            .map_err(|error| {
                format!("invalid duration `{text}`: {error}; write e.g. \"5s\" or \"250ms\"")
            })
    }
}

impl<'de> Deserialize<'de> for TextDuration {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Writes a duration as milliseconds (fractional: a loopback poll takes
/// less than one), the unit every `_ms` field of the API uses.
pub fn serialize_ms<S: serde::Serializer>(
    duration: &Duration,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.serialize_f64(duration.as_secs_f64() * 1000.0)
}

/// [`serialize_ms`] for a duration that may be absent (`null`).
pub fn serialize_opt_ms<S: serde::Serializer>(
    duration: &Option<Duration>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match duration {
        Some(duration) => serialize_ms(duration, serializer),
        None => serializer.serialize_none(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_parses_into_a_duration() {
        let parse = |text: &str| text.parse::<TextDuration>().map(TextDuration::get);
        assert_eq!(parse("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse("1m 30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse("0s"), Ok(Duration::ZERO));
        let error = parse("soon").unwrap_err();
        assert!(error.starts_with("invalid duration `soon`: "), "{error}");
        assert!(error.ends_with("write e.g. \"5s\" or \"250ms\""), "{error}");
    }
}
