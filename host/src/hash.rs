//! Content hashes in hex: a component's sha256 is its identity for hot
//! reload (same hash, nothing to swap) and for the compile cache (the entry's
//! file name, so `sha256sum rule.wasm` finds it). [`Sha256`] is the typed
//! value for a hash the operator wrote down (a rule's `sha256` pin).

use std::fmt;
use std::str::FromStr;

use sha2::Digest;

/// The sha256 of `bytes`, as 64 lowercase hex digits.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&sha2::Sha256::digest(bytes))
}

/// A sha256 digest. Parsed from the 64 hex digits `sha256sum` prints (either
/// case), displayed in lowercase.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Sha256([u8; 32]);

impl Sha256 {
    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Sha256(sha2::Sha256::digest(bytes).into())
    }
}

impl fmt::Display for Sha256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex(&self.0))
    }
}

impl fmt::Debug for Sha256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sha256({self})")
    }
}

impl FromStr for Sha256 {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let wrong = || {
            format!(
                "`{text}` is not a sha256: it takes 64 hex digits\nhint: `sha256sum FILE` prints it"
            )
        };
        // Checked digit by digit: `from_str_radix` alone would take `+f`.
        if text.len() != 64 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(wrong());
        }
        let mut digest = [0u8; 32];
        for (byte, pair) in digest.iter_mut().zip(text.as_bytes().chunks(2)) {
            let pair = std::str::from_utf8(pair).map_err(|_| wrong())?;
            *byte = u8::from_str_radix(pair, 16).map_err(|_| wrong())?;
        }
        Ok(Sha256(digest))
    }
}

/// `bytes` as lowercase hex, two digits a byte.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes
        .iter()
        .fold(String::with_capacity(2 * bytes.len()), |mut out, byte| {
            let _ = write!(out, "{byte:02x}");
            out
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_hex_matches_sha256sum() {
        // `printf abc | sha256sum`
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(hex(&[0x00, 0x0f, 0xa0, 0xff]), "000fa0ff");
    }

    #[test]
    fn a_sha256_parses_from_either_case_and_prints_as_sha256sum_does() {
        let abc = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        let parsed: Sha256 = abc.to_uppercase().parse().unwrap();
        assert_eq!(parsed, Sha256::of(b"abc"));
        assert_eq!(parsed.to_string(), abc);
        assert_eq!(parsed.to_string(), sha256_hex(b"abc"));
        let plus = format!("+f{}", &abc[2..]);
        for wrong in [
            "",
            "abc",
            &abc[1..],
            &format!("{abc}0"),
            &abc.replace('a', "g"),
            &plus,
        ] {
            let error = wrong.parse::<Sha256>().unwrap_err();
            assert!(error.contains("64 hex digits"), "{error}");
        }
        // Multi-byte text of the right length is refused, not split.
        let error = format!("é{}", &abc[2..]).parse::<Sha256>().unwrap_err();
        assert!(error.contains("not a sha256"), "{error}");
    }
}
