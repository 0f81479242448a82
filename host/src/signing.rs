//! `vigil keygen` and `vigil sign`: minisign keys and signatures for rule
//! authors who do not have the `minisign` tool.
//!
//! The files are the tool's, byte for byte in format: a key made here signs
//! with `minisign -S`, a signature made here verifies with `minisign -V`, and
//! the host checks both with `plugins::trust` (the `minisign-verify` crate,
//! a separate implementation from the `minisign` crate used here; the tests
//! cross-check them against the real tool). Signatures are always prehashed
//! (BLAKE2b, as minisign does by default), never legacy.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use ct_codecs::{Base64, Decoder};
use minisign::{KeyPair, SecretKey, SecretKeyBox};

use crate::plugins::trust::SignatureFile;

/// Writes a new key pair: the public key to `public`, the secret key to
/// `secret` (mode 0600), asking for a password at the terminal when
/// `password` is set. Refuses to replace existing files unless `force`.
pub fn keygen(public: &Path, secret: &Path, password: bool, force: bool) -> anyhow::Result<()> {
    if !force {
        for path in [public, secret] {
            if path.exists() {
                bail!(
                    "`{}` exists already\nhint: pass --force to replace it, or choose another path",
                    path.display()
                );
            }
        }
    }
    let pair = if password {
        KeyPair::generate_encrypted_keypair(None)
    } else {
        KeyPair::generate_unencrypted_keypair()
    }
    .map_err(|error| anyhow::anyhow!("cannot make a key pair: {error}"))?;
    let secret_text = pair
        .sk
        .to_box(None)
        .map_err(|error| anyhow::anyhow!("cannot encode the secret key: {error}"))?
        .into_string();
    let public_text = pair
        .pk
        .to_box()
        .map_err(|error| anyhow::anyhow!("cannot encode the public key: {error}"))?
        .into_string();
    write_new(secret, secret_text.as_bytes(), 0o600, force)?;
    write_new(public, public_text.as_bytes(), 0o644, force)?;
    println!("public key: `{}`", public.display());
    println!("secret key: `{}` (keep it private)", secret.display());
    println!("Trust it in the host's config:");
    println!("  [trust]");
    println!("  keys = [\"{}\"]", public.display());
    println!("Sign a rule with:");
    println!("  vigil sign --secret-key {} RULE.wasm", secret.display());
    Ok(())
}

/// Reads a secret key, asking for its password at the terminal if it has
/// one.
pub fn secret_key(path: &Path) -> anyhow::Result<SecretKey> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the secret key `{}`", path.display()))?;
    let unusable = |error: minisign::PError| {
        anyhow::anyhow!(
            "`{}` is not a usable minisign secret key: {error}\nhint: it is the `.key` file `vigil keygen` or `minisign -G` wrote",
            path.display()
        )
    };
    // The key's bytes, to tell an unencrypted key from an encrypted one
    // before any password is asked for. An unencrypted key is taken as it
    // is: Debian's `minisign` 0.11 writes `-G -W` keys with a zero
    // checksum, which the `minisign` crate's own loader refuses as
    // corrupted.
    let bytes = text
        .lines()
        .nth(1)
        .and_then(|line| Base64::decode_to_vec(line.trim(), None).ok());
    let key = bytes.and_then(|bytes| SecretKey::from_bytes(&bytes).ok());
    match key {
        Some(key) if !key.is_encrypted() => Ok(key),
        // Encrypted: decrypting asks for the password at the terminal and
        // checks the key's checksum.
        Some(_) => SecretKey::from_box(SecretKeyBox::from_string(&text).map_err(unusable)?, None)
            .map_err(unusable),
        None => Err(anyhow::anyhow!(
            "`{}` is not a minisign secret key\nhint: it is the `.key` file `vigil keygen` or `minisign -G` wrote",
            path.display()
        )),
    }
}

/// Signs `file` with `key` into `FILE.minisig`, and returns that path. The
/// trusted comment defaults to minisign's: the time and the file's name.
pub fn sign(
    key: &SecretKey,
    file: &Path,
    trusted_comment: Option<&str>,
) -> anyhow::Result<PathBuf> {
    let bytes = std::fs::read(file).with_context(|| format!("cannot read `{}`", file.display()))?;
    let default_comment;
    let trusted_comment = match trusted_comment {
        Some(comment) => comment,
        None => {
            let name = file
                .file_name()
                .map_or_else(String::new, |name| name.to_string_lossy().into_owned());
            default_comment = format!(
                "timestamp:{}\tfile:{name}\thashed",
                crate::clock::now_ms() / 1000
            );
            &default_comment
        }
    };
    if trusted_comment.contains(['\n', '\r']) {
        bail!(
            "the trusted comment is one line\nhint: remove the line breaks from --trusted-comment"
        );
    }
    let signature = minisign::sign(
        None,
        key,
        bytes.as_slice(),
        Some(trusted_comment),
        Some("signature from vigil sign"),
    )
    .map_err(|error| anyhow::anyhow!("cannot sign `{}`: {error}", file.display()))?;
    let path = SignatureFile::path_of(file);
    std::fs::write(&path, signature.into_string())
        .with_context(|| format!("cannot write `{}`", path.display()))?;
    Ok(path)
}

/// Writes `bytes` to a file created with `mode`; without `force`, never over
/// one that appeared since the check.
fn write_new(path: &Path, bytes: &[u8], mode: u32, force: bool) -> anyhow::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true);
    if force {
        options.create(true).truncate(true);
    } else {
        options.create_new(true);
    }
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, mode);
    #[cfg(not(unix))]
    let _ = mode;
    let mut file = options
        .open(path)
        .with_context(|| format!("cannot create `{}`", path.display()))?;
    file.write_all(bytes)
        .with_context(|| format!("cannot write `{}`", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugins::trust::{Keyring, TrustSettings, TrustedKey};

    #[test]
    fn a_generated_key_signs_what_the_host_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let (public, secret) = (dir.path().join("a.pub"), dir.path().join("a.key"));
        keygen(&public, &secret, false, false).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&secret).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let rule = dir.path().join("rule.wasm");
        std::fs::write(&rule, b"some component").unwrap();
        let written = sign(&secret_key(&secret).unwrap(), &rule, None).unwrap();
        assert_eq!(written, dir.path().join("rule.wasm.minisig"));

        let trust = TrustSettings {
            keys: Keyring::new(vec![TrustedKey::read(&public).unwrap()]),
            require_signature: true,
        }
        .for_rule(None, None)
        .unwrap();
        let signature = SignatureFile::read(&rule).unwrap();
        let signer = trust
            .check(b"some component", Some(&signature))
            .unwrap()
            .unwrap();
        assert!(
            signer.trusted_comment.starts_with("timestamp:")
                && signer.trusted_comment.ends_with("\tfile:rule.wasm\thashed"),
            "{}",
            signer.trusted_comment
        );

        // Existing keys are kept unless --force.
        let error = keygen(&public, &secret, false, false).unwrap_err();
        assert!(
            error
                .to_string()
                .contains("exists already\nhint: pass --force")
        );
        keygen(&public, &secret, false, true).unwrap();
        assert!(trust.check(b"some component", Some(&signature)).is_ok());
        let renewed = TrustedKey::read(&public).unwrap();
        assert_ne!(Keyring::new(vec![renewed]), trust.signers.unwrap());
    }

    #[test]
    fn a_public_key_is_not_a_secret_key_and_comments_are_one_line() {
        let dir = tempfile::tempdir().unwrap();
        let (public, secret) = (dir.path().join("a.pub"), dir.path().join("a.key"));
        keygen(&public, &secret, false, false).unwrap();
        let error = secret_key(&public).unwrap_err().to_string();
        assert!(
            error.starts_with(&format!(
                "`{}` is not a minisign secret key",
                public.display()
            )),
            "{error}"
        );
        let rule = dir.path().join("rule.wasm");
        std::fs::write(&rule, b"x").unwrap();
        let error = sign(&secret_key(&secret).unwrap(), &rule, Some("a\nb")).unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with("the trusted comment is one line")
        );
    }
}
