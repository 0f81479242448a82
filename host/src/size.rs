//! Sizes in config files are text (`"256MiB"`, `"64KiB"`, `"1GB"`), parsed
//! once into a byte count: never a bare number with a unit guessed from the
//! field's name.

use serde::Deserialize;

/// A size written as text: a whole number and a unit, `B`, `KB`/`MB`/`GB`
/// (powers of 1000) or `KiB`/`MiB`/`GiB` (powers of 1024).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct TextSize(pub u64);

impl TextSize {
    /// The size in bytes.
    pub fn bytes(self) -> u64 {
        self.0
    }
}

impl std::str::FromStr for TextSize {
    type Err = String;

    /// Parses `256MiB`, `64 KiB`, `1GB`, `512B`; the error quotes the text
    /// and gives an example.
    fn from_str(text: &str) -> Result<Self, String> {
        let invalid =
            |why: &str| format!("invalid size `{text}`: {why}; write e.g. \"256MiB\" or \"64KiB\"");
        let trimmed = text.trim();
        let split = trimmed
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(trimmed.len());
        let (number, unit) = trimmed.split_at(split);
        let number: u64 = number
            .parse()
            .map_err(|_| invalid("it does not start with a whole number"))?;
        let unit = match unit.trim() {
            "B" => 1,
            "KB" => 1_000,
            "MB" => 1_000_000,
            "GB" => 1_000_000_000,
            "KiB" => 1 << 10,
            "MiB" => 1 << 20,
            "GiB" => 1 << 30,
            "" => return Err(invalid("the unit is missing")),
            _ => return Err(invalid("unknown unit; use B, KB, MB, GB, KiB, MiB or GiB")),
        };
        number
            .checked_mul(unit)
            .map(TextSize)
            .ok_or_else(|| invalid("too large"))
    }
}

impl<'de> Deserialize<'de> for TextSize {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_parses_into_bytes() {
        let parse = |text: &str| text.parse::<TextSize>().map(TextSize::bytes);
        assert_eq!(parse("256MiB"), Ok(256 << 20));
        assert_eq!(parse("64 KiB"), Ok(64 << 10));
        assert_eq!(parse("1GB"), Ok(1_000_000_000));
        assert_eq!(parse("512B"), Ok(512));
        let error = parse("256").unwrap_err();
        assert_eq!(
            error,
            "invalid size `256`: the unit is missing; write e.g. \"256MiB\" or \"64KiB\""
        );
        assert!(parse("lots").unwrap_err().contains("whole number"));
        assert!(parse("1TiB").unwrap_err().contains("unknown unit"));
        assert!(
            parse("99999999999999GiB")
                .unwrap_err()
                .contains("too large")
        );
    }
}
