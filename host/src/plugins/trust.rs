//! Trust: which rule files the host agrees to compile.
//!
//! A rule file can be pinned to one build (`sha256 = "…"`: only those exact
//! bytes load) and required to carry a signature (`require_signature`: a
//! detached minisign signature, `FILE.minisig` beside the file, made by one of
//! the trusted keys). Both are checked on the bytes that were read, before
//! and instead of reading the file again: the caller reads a rule once,
//! [`Trust::check`]s those bytes, and compiles the same buffer, so nothing can
//! swap the file between the check and the compile.
//!
//! | type | what it is |
//! |---|---|
//! | [`TrustedKey`] | a minisign public key read from its `.pub` file |
//! | [`Keyring`] | the keys one party trusts |
//! | [`TrustSettings`] | a party's keys and its default for `require_signature`: the operator's `[trust]` today; a tenant's own section can build one the same way |
//! | [`Trust`] | what one rule must pass: its pin, and the keys it must be signed by |
//! | [`SignatureFile`] | a rule's `.minisig`, as read (or its absence) |
//!
//! Verification uses `minisign-verify` (no dependencies); keys and
//! signatures are the `minisign` tool's, so authors sign with it or with
//! `vigil sign`. Legacy (non-prehashed) signatures are refused: current
//! `minisign` only makes them when asked to. This module refuses to guess: a
//! signature that is present but not required is not read at all, and a
//! required one that does not verify is never a warning.

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use minisign_verify::{Error as VerifyError, PublicKey, Signature};

use crate::hash::Sha256;

/// The extension of a detached signature: `rule.wasm` is signed by
/// `rule.wasm.minisig`, where `minisign -S -m rule.wasm` writes it.
pub const SIGNATURE_EXTENSION: &str = "minisig";

/// A signature file is a few hundred bytes; anything past this is not one,
/// and is not read whole.
const MAX_SIGNATURE_BYTES: u64 = 16 * 1024;

/// A minisign public key the host trusts, and the file it came from (which
/// names it in logs and errors).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrustedKey {
    /// The `.pub` file.
    pub file: PathBuf,
    key: PublicKey,
}

impl TrustedKey {
    /// Reads a minisign public key file (`minisign -G` or `vigil keygen`
    /// writes one).
    pub fn read(file: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(file)
            .map_err(|error| format!("cannot read the public key `{}`: {error}", file.display()))?;
        Self::parse(&text, file)
    }

    /// Parses the text of a public key file; `file` names it.
    pub fn parse(text: &str, file: &Path) -> Result<Self, String> {
        if text.contains("secret key") {
            return Err(format!(
                "`{}` is a secret key\nhint: trust its public half (the `.pub` file); the secret key stays with whoever signs",
                file.display()
            ));
        }
        let key = PublicKey::decode(text.trim_start()).map_err(|error| {
            format!(
                "`{}` is not a minisign public key ({})\nhint: it is the two-line `.pub` file that `vigil keygen` or `minisign -G` writes",
                file.display(),
                lowercase(&error)
            )
        })?;
        Ok(TrustedKey {
            file: file.to_path_buf(),
            key,
        })
    }
}

/// The keys one party trusts to sign rules. Cheap to clone: every rule that
/// needs it shares one list.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Keyring(Arc<[TrustedKey]>);

impl Keyring {
    /// A keyring of these keys.
    pub fn new(keys: Vec<TrustedKey>) -> Self {
        Keyring(keys.into())
    }

    /// Whether it holds no key.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The keys' files, in backticks, for messages.
    fn names(&self) -> String {
        let names: Vec<String> = self
            .0
            .iter()
            .map(|key| format!("`{}`", key.file.display()))
            .collect();
        names.join(", ")
    }
}

/// Whom one party trusts and what it asks of its rules unless a rule says
/// otherwise: the operator's `[trust]` section. A tenant's section can
/// carry its own, built the same way, for the rules it declares.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrustSettings {
    /// The keys whose signatures are accepted.
    pub keys: Keyring,
    /// Whether a rule file needs a signature when its own table does not say.
    pub require_signature: bool,
}

impl TrustSettings {
    /// The trust for one rule file: its own pin, and its own
    /// `require_signature` over the default. Refuses a signature required
    /// with no key to check it against.
    pub fn for_rule(
        &self,
        sha256: Option<Sha256>,
        require_signature: Option<bool>,
    ) -> Result<Trust, String> {
        let required = require_signature.unwrap_or(self.require_signature);
        if required && self.keys.is_empty() {
            return Err("a signature is required but no key is trusted to make it\nhint: list the signers' public keys in `[trust] keys = [\"keys/ops.pub\"]`".into());
        }
        Ok(Trust {
            sha256,
            signers: required.then(|| self.keys.clone()),
        })
    }
}

/// What one rule file must pass before it is compiled. The default passes
/// everything (no pin, no signature needed): builtin rules, and rule files
/// the operator did not ask to check.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Trust {
    /// Only these exact bytes load.
    pub sha256: Option<Sha256>,
    /// A signature by one of these keys is required (never an empty ring).
    pub signers: Option<Keyring>,
}

impl Trust {
    /// Whether the rule's `.minisig` must be read.
    pub fn requires_signature(&self) -> bool {
        self.signers.is_some()
    }

    /// Checks the bytes that are about to be compiled: the pin first, then
    /// the signature read from the rule's [`SignatureFile`] (`None` when no
    /// signature is required and it was not read). On success, who signed
    /// it, if a signature was required.
    pub fn check(
        &self,
        bytes: &[u8],
        signature: Option<&SignatureFile>,
    ) -> Result<Option<Signer>, TrustError> {
        self.check_hashed(bytes, Sha256::of(bytes), signature)
    }

    /// [`check`](Self::check) with the sha256 of `bytes` already computed
    /// (by [`RuleBytes`](super::RuleBytes), once for every use of the
    /// bytes). `hash` must be the digest of `bytes`: the pin is compared
    /// with it.
    pub(crate) fn check_hashed(
        &self,
        bytes: &[u8],
        hash: Sha256,
        signature: Option<&SignatureFile>,
    ) -> Result<Option<Signer>, TrustError> {
        if let Some(pinned) = self.sha256 {
            let actual = hash;
            if actual != pinned {
                return Err(TrustError::Pin { pinned, actual });
            }
        }
        let Some(keys) = &self.signers else {
            return Ok(None);
        };
        let Some(file) = signature else {
            // The caller did not read it; as good as missing.
            return Err(TrustError::Unsigned {
                path: PathBuf::from(format!("<rule file>.{SIGNATURE_EXTENSION}")),
            });
        };
        let path = file.path.clone();
        let Some(raw) = &file.bytes else {
            return Err(TrustError::Unsigned { path });
        };
        let malformed = |reason: String| TrustError::Malformed {
            path: file.path.clone(),
            reason,
        };
        let text = std::str::from_utf8(raw).map_err(|_| malformed("it is not text".into()))?;
        let parsed = Signature::decode(text).map_err(|error| malformed(lowercase(&error)))?;
        let mut mismatch = false;
        for key in keys.0.iter() {
            match key.key.verify(bytes, &parsed, false) {
                Ok(()) => {
                    return Ok(Some(Signer {
                        key: key.file.clone(),
                        trusted_comment: parsed.trusted_comment().to_string(),
                    }));
                }
                // Made by another key: try the next one.
                Err(VerifyError::UnexpectedKeyId) => {}
                Err(VerifyError::UnexpectedAlgorithm) => {
                    return Err(malformed(
                        "a legacy signature, which is not accepted; sign again with a current minisign (without -l) or `vigil sign`".into(),
                    ));
                }
                // This key's id, but the file or the comment do not match.
                Err(_) => mismatch = true,
            }
        }
        Err(if mismatch {
            TrustError::Mismatch { path }
        } else {
            TrustError::UntrustedKey {
                path,
                keys: keys.names(),
            }
        })
    }
}

/// A rule's detached signature as read from disk: the bytes of
/// `FILE.minisig`, or `None` when there is no such file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignatureFile {
    /// `FILE.minisig`.
    pub path: PathBuf,
    /// Its content, if it exists.
    pub bytes: Option<Vec<u8>>,
}

impl SignatureFile {
    /// The path of `rule`'s signature: `rule.wasm.minisig`.
    pub fn path_of(rule: &Path) -> PathBuf {
        let mut path = rule.as_os_str().to_owned();
        path.push(".");
        path.push(SIGNATURE_EXTENSION);
        PathBuf::from(path)
    }

    /// Reads `rule`'s signature. A missing file is not an error here (the
    /// check reports it); one that cannot be read is.
    pub fn read(rule: &Path) -> std::io::Result<Self> {
        let path = Self::path_of(rule);
        let file = match std::fs::File::open(&path) {
            Ok(file) => file,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                return Ok(SignatureFile { path, bytes: None });
            }
            Err(error) => return Err(error),
        };
        let mut bytes = Vec::new();
        file.take(MAX_SIGNATURE_BYTES).read_to_end(&mut bytes)?;
        Ok(SignatureFile {
            path,
            bytes: Some(bytes),
        })
    }

    /// A fingerprint of what was read (`None` for no file): a new signature
    /// for an unchanged rule is a change to check again.
    pub fn fingerprint(&self) -> Option<Sha256> {
        self.bytes.as_deref().map(Sha256::of)
    }
}

/// Who signed a rule that passed: the trusted key, and the comment the
/// signer put under the signature (`timestamp:… file:…` by default).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Signer {
    /// The trusted key's `.pub` file.
    pub key: PathBuf,
    /// The signature's trusted comment (signed with the file; the author's
    /// text, so escaped wherever it is printed).
    pub trusted_comment: String,
}

impl fmt::Display for Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "`{}` ({})",
            self.key.display(),
            crate::text::one_line(&self.trusted_comment)
        )
    }
}

/// Why a rule file is not trusted. Each message names the file at fault and
/// ends with a hint.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TrustError {
    /// The bytes are not the pinned build.
    #[error(
        "its sha256 is {actual}, but the config pins {pinned}\nhint: if this build is the one to run, pin it: sha256 = \"{actual}\""
    )]
    Pin {
        /// What the config says.
        pinned: Sha256,
        /// What the file holds.
        actual: Sha256,
    },
    /// A signature is required and there is none.
    #[error(
        "it is not signed: `{}` does not exist\nhint: sign it with `vigil sign --secret-key YOUR.key FILE` or `minisign -S -m FILE`, and deploy the signature beside it",
        path.display()
    )]
    Unsigned {
        /// Where the signature should be.
        path: PathBuf,
    },
    /// The signature file is not a usable minisign signature.
    #[error(
        "`{}` is not a minisign signature: {reason}\nhint: sign the file again with `vigil sign` or `minisign -S`",
        path.display()
    )]
    Malformed {
        /// The signature file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The signature is sound but no trusted key made it.
    #[error(
        "`{}` was made by a key that is not trusted (trusted: {keys})\nhint: sign with a trusted key, or add the signer's public key to `[trust] keys`",
        path.display()
    )]
    UntrustedKey {
        /// The signature file.
        path: PathBuf,
        /// The trusted keys' files.
        keys: String,
    },
    /// A trusted key's signature, but not of these bytes: the file (or the
    /// signature's comment) changed after signing.
    #[error(
        "`{}` does not match the file: the file or its signature changed after signing\nhint: sign this build again, and deploy the file and its signature together",
        path.display()
    )]
    Mismatch {
        /// The signature file.
        path: PathBuf,
    },
}

/// `minisign-verify`'s messages start with a capital; ours do not.
fn lowercase(error: &VerifyError) -> String {
    let text = error.to_string();
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    //! Keys and signatures are made with the `minisign` crate (what `vigil
    //! sign` uses); `tests/trust.rs` does the same with the `minisign` tool.

    use super::*;

    struct Author {
        public: TrustedKey,
        secret: minisign::SecretKey,
    }

    fn author(name: &str) -> Author {
        let pair = minisign::KeyPair::generate_unencrypted_keypair().unwrap();
        let text = pair.pk.to_box().unwrap().into_string();
        Author {
            public: TrustedKey::parse(&text, Path::new(name)).unwrap(),
            secret: pair.sk,
        }
    }

    fn sign(author: &Author, bytes: &[u8], comment: &str) -> SignatureFile {
        let signature = minisign::sign(None, &author.secret, bytes, Some(comment), None).unwrap();
        SignatureFile {
            path: "rule.wasm.minisig".into(),
            bytes: Some(signature.into_string().into_bytes()),
        }
    }

    fn signed_by(keys: &[&Author]) -> Trust {
        let settings = TrustSettings {
            keys: Keyring::new(keys.iter().map(|author| author.public.clone()).collect()),
            require_signature: true,
        };
        settings.for_rule(None, None).unwrap()
    }

    #[test]
    fn a_good_signature_names_its_key_and_trusted_comment() {
        let (ops, ci) = (author("ops.pub"), author("ci.pub"));
        let signature = sign(&ci, b"rule", "build 42");
        let signer = signed_by(&[&ops, &ci])
            .check(b"rule", Some(&signature))
            .unwrap()
            .unwrap();
        assert_eq!(signer.key, Path::new("ci.pub"));
        assert_eq!(signer.trusted_comment, "build 42");
        assert_eq!(signer.to_string(), "`ci.pub` (build 42)");
    }

    #[test]
    fn tampered_bytes_untrusted_keys_and_missing_signatures_are_refused() {
        let (ops, stranger) = (author("ops.pub"), author("stranger.pub"));
        let trust = signed_by(&[&ops]);
        let good = sign(&ops, b"rule", "ok");

        let tampered = trust.check(b"rulf", Some(&good)).unwrap_err();
        assert!(matches!(tampered, TrustError::Mismatch { .. }));
        assert!(
            tampered
                .to_string()
                .starts_with("`rule.wasm.minisig` does not match the file")
        );

        let foreign = trust
            .check(b"rule", Some(&sign(&stranger, b"rule", "ok")))
            .unwrap_err();
        assert_eq!(
            foreign.to_string(),
            "`rule.wasm.minisig` was made by a key that is not trusted (trusted: `ops.pub`)\nhint: sign with a trusted key, or add the signer's public key to `[trust] keys`"
        );

        let missing = SignatureFile {
            path: "rule.wasm.minisig".into(),
            bytes: None,
        };
        let unsigned = trust.check(b"rule", Some(&missing)).unwrap_err();
        assert!(
            unsigned
                .to_string()
                .starts_with("it is not signed: `rule.wasm.minisig` does not exist\nhint: "),
            "{unsigned}"
        );
    }

    #[test]
    fn an_edited_trusted_comment_breaks_the_signature() {
        let ops = author("ops.pub");
        let good = sign(&ops, b"rule", "release 1");
        let text = String::from_utf8(good.bytes.clone().unwrap()).unwrap();
        let forged = SignatureFile {
            bytes: Some(text.replace("release 1", "release 2").into_bytes()),
            ..good
        };
        let error = signed_by(&[&ops])
            .check(b"rule", Some(&forged))
            .unwrap_err();
        assert!(matches!(error, TrustError::Mismatch { .. }), "{error}");
    }

    #[test]
    fn a_signature_that_is_not_one_is_malformed() {
        let ops = author("ops.pub");
        let trust = signed_by(&[&ops]);
        for bytes in [&b""[..], b"untrusted comment: x\nnot base64\n", b"\xff\xfe"] {
            let file = SignatureFile {
                path: "rule.wasm.minisig".into(),
                bytes: Some(bytes.to_vec()),
            };
            let error = trust.check(b"rule", Some(&file)).unwrap_err();
            assert!(matches!(error, TrustError::Malformed { .. }), "{error}");
            assert!(error.to_string().contains("hint: "), "{error}");
        }
    }

    #[test]
    fn a_pin_takes_only_its_bytes_and_is_checked_before_the_signature() {
        let trust = TrustSettings::default()
            .for_rule(Some(Sha256::of(b"rule")), None)
            .unwrap();
        assert_eq!(trust.check(b"rule", None), Ok(None));
        let error = trust.check(b"rulf", None).unwrap_err();
        assert_eq!(
            error,
            TrustError::Pin {
                pinned: Sha256::of(b"rule"),
                actual: Sha256::of(b"rulf")
            }
        );
        assert!(
            error.to_string().ends_with(&format!(
                "hint: if this build is the one to run, pin it: sha256 = \"{}\"",
                Sha256::of(b"rulf")
            )),
            "{error}"
        );
        // Pinned and signed: a wrong build is a pin error, whatever its signature.
        let ops = author("ops.pub");
        let both = Trust {
            sha256: Some(Sha256::of(b"rule")),
            ..signed_by(&[&ops])
        };
        let signature = sign(&ops, b"rulf", "");
        assert!(matches!(
            both.check(b"rulf", Some(&signature)),
            Err(TrustError::Pin { .. })
        ));
        assert!(both.check(b"rule", Some(&sign(&ops, b"rule", ""))).is_ok());
    }

    #[test]
    fn a_required_signature_needs_a_trusted_key_and_a_rule_may_opt_out() {
        let none = TrustSettings {
            keys: Keyring::default(),
            require_signature: true,
        };
        let error = none.for_rule(None, None).unwrap_err();
        assert!(error.contains("[trust] keys"), "{error}");
        // A rule that opts out needs no key, and checks nothing.
        assert_eq!(none.for_rule(None, Some(false)), Ok(Trust::default()));
        let ops = author("ops.pub");
        let optional = TrustSettings {
            keys: Keyring::new(vec![ops.public.clone()]),
            require_signature: false,
        };
        assert!(!optional.for_rule(None, None).unwrap().requires_signature());
        assert!(
            optional
                .for_rule(None, Some(true))
                .unwrap()
                .requires_signature()
        );
    }

    #[test]
    fn key_files_are_public_keys_and_a_secret_key_is_named_as_one() {
        let pair = minisign::KeyPair::generate_unencrypted_keypair().unwrap();
        let secret = pair.sk.to_box(None).unwrap().into_string();
        let error = TrustedKey::parse(&secret, Path::new("ops.key")).unwrap_err();
        assert!(
            error.starts_with("`ops.key` is a secret key\nhint: "),
            "{error}"
        );
        let error = TrustedKey::parse("hello\n", Path::new("ops.pub")).unwrap_err();
        assert!(
            error.starts_with("`ops.pub` is not a minisign public key (invalid encoding"),
            "{error}"
        );
        let error = TrustedKey::read(Path::new("/nonexistent/ops.pub")).unwrap_err();
        assert!(error.starts_with("cannot read the public key `/nonexistent/ops.pub`"));
    }

    #[test]
    fn signatures_sit_beside_the_rule_and_are_read_with_a_bound() {
        assert_eq!(
            SignatureFile::path_of(Path::new("/rules/disk.wasm")),
            Path::new("/rules/disk.wasm.minisig")
        );
        let dir = tempfile::tempdir().unwrap();
        let rule = dir.path().join("disk.wasm");
        let absent = SignatureFile::read(&rule).unwrap();
        assert_eq!(absent.bytes, None);
        assert_eq!(absent.fingerprint(), None);
        std::fs::write(SignatureFile::path_of(&rule), vec![b'x'; 100_000]).unwrap();
        let big = SignatureFile::read(&rule).unwrap();
        assert_eq!(big.bytes.as_ref().map(Vec::len), Some(16 * 1024));
        assert!(big.fingerprint().is_some());
    }
}
