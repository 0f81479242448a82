//! The data directory: where a host keeps what outlives it.
//!
//! ```text
//! <data dir>/
//!   state.redb   rule state, tracked alerts, the audit log (StateDb; one process at a time)
//!   cache/       compiled rules (runtime::CompileCache), shared by `vigil run` and `vigil test`
//! ```

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use super::{StateDb, StateError};

/// The state database's file name in the data directory.
const STATE_FILE: &str = "state.redb";
/// The compile cache's folder in the data directory.
const CACHE_DIR: &str = "cache";

/// A data directory (`--data-dir`, the config's `data_dir`, or
/// [`DataDir::default_location`]) and the files in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataDir {
    path: PathBuf,
}

/// Why the data directory or its state database cannot be used. Each
/// message names the path and hints at the fix.
#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    /// The directory could not be created.
    #[error("cannot create the data directory `{}`: {error}", path.display())]
    Create {
        /// The directory.
        path: PathBuf,
        /// Why.
        error: std::io::Error,
    },
    /// The state database would not open (for a host: most often another
    /// vigil holds it).
    #[error(
        "cannot open the state database `{}`: {error}\nhint: is another vigil using this data \
         directory? Give each its own with --data-dir",
        path.display()
    )]
    Open {
        /// The database file.
        path: PathBuf,
        /// Why.
        error: StateError,
    },
    /// There is no state database to read (for `vigil audit`).
    #[error("no state database at `{}`\nhint: pass the --data-dir vigil runs with", path.display())]
    Missing {
        /// The database file that does not exist.
        path: PathBuf,
    },
    /// An existing state database would not open (for `vigil audit`: most
    /// often the host is running).
    #[error(
        "cannot open `{}`: {error}\nhint: stop the vigil using it first; the database allows one \
         process at a time",
        path.display()
    )]
    Busy {
        /// The database file.
        path: PathBuf,
        /// Why.
        error: StateError,
    },
}

impl DataDir {
    /// The data directory at `path`; nothing is created until
    /// [`create`](Self::create).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        DataDir { path: path.into() }
    }

    /// `$XDG_STATE_HOME/vigil`, else `~/.local/state/vigil`, else
    /// `./vigil-data` (empty variables count as unset).
    pub fn default_location() -> Self {
        Self::new(default_path(|name| std::env::var_os(name)))
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Creates the directory (and its parents) if it does not exist.
    pub fn create(&self) -> Result<(), DataDirError> {
        std::fs::create_dir_all(&self.path).map_err(|error| DataDirError::Create {
            path: self.path.clone(),
            error,
        })
    }

    /// Opens the state database, creating it if needed: for the host, after
    /// [`create`](Self::create).
    pub fn open_state(&self) -> Result<StateDb, DataDirError> {
        let path = self.state_path();
        StateDb::open(&path).map_err(|error| DataDirError::Open { path, error })
    }

    /// Opens the state database only if it exists: for commands that read
    /// what a host left (`vigil audit`), so a mistyped `--data-dir` is an
    /// error rather than a new, empty database.
    pub fn open_existing_state(&self) -> Result<StateDb, DataDirError> {
        let path = self.state_path();
        if !path.exists() {
            return Err(DataDirError::Missing { path });
        }
        StateDb::open(&path).map_err(|error| DataDirError::Busy { path, error })
    }

    /// The compile cache's folder, `<dir>/cache` (created when first
    /// written): give it to `runtime::CompileCache::new`. A path, not the
    /// cache, so storage does not depend on the runtime it serves.
    pub fn cache_dir(&self) -> PathBuf {
        self.path.join(CACHE_DIR)
    }

    fn state_path(&self) -> PathBuf {
        self.path.join(STATE_FILE)
    }
}

/// [`DataDir::default_location`] with the environment passed in.
fn default_path(var: impl Fn(&str) -> Option<OsString>) -> PathBuf {
    let non_empty = |name: &str| var(name).filter(|value| !value.is_empty());
    if let Some(state) = non_empty("XDG_STATE_HOME") {
        return PathBuf::from(state).join("vigil");
    }
    if let Some(home) = non_empty("HOME") {
        return PathBuf::from(home).join(".local/state/vigil");
    }
    PathBuf::from("vigil-data")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An environment with just `vars`.
    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<OsString> + 'a {
        move |name| {
            vars.iter()
                .find(|(key, _)| *key == name)
                .map(|(_, value)| OsString::from(value))
        }
    }

    #[test]
    fn the_default_location_follows_xdg_then_home() {
        let both = [("XDG_STATE_HOME", "/xdg"), ("HOME", "/home/ops")];
        assert_eq!(default_path(env(&both)), Path::new("/xdg/vigil"));
        let empty_xdg = [("XDG_STATE_HOME", ""), ("HOME", "/home/ops")];
        assert_eq!(
            default_path(env(&empty_xdg)),
            Path::new("/home/ops/.local/state/vigil")
        );
        assert_eq!(default_path(env(&[("HOME", "")])), Path::new("vigil-data"));
    }

    #[test]
    fn a_held_database_is_refused_with_a_hint() {
        let dir = tempfile::tempdir().unwrap();
        let data = DataDir::new(dir.path().join("data"));
        let error = data.open_existing_state().err().unwrap().to_string();
        assert!(error.starts_with("no state database at `"), "{error}");
        assert!(
            error.ends_with("state.redb`\nhint: pass the --data-dir vigil runs with"),
            "{error}"
        );

        data.create().unwrap();
        let _host = data.open_state().unwrap();
        let error = data.open_state().err().unwrap().to_string();
        assert!(
            error.ends_with(
                "\nhint: is another vigil using this data directory? Give each its own with \
                 --data-dir"
            ),
            "{error}"
        );
        let error = data.open_existing_state().err().unwrap().to_string();
        assert!(
            error.ends_with(
                "\nhint: stop the vigil using it first; the database allows one process at a time"
            ),
            "{error}"
        );
        assert!(error.starts_with("cannot open `"), "{error}");
        assert_eq!(data.cache_dir(), dir.path().join("data/cache"));
    }

    #[test]
    fn a_directory_that_cannot_be_created_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a-file");
        std::fs::write(&file, "").unwrap();
        let error = DataDir::new(file.join("data")).create().unwrap_err();
        let error = error.to_string();
        assert!(
            error.starts_with("cannot create the data directory `")
                && error.contains("a-file/data`: "),
            "{error}"
        );
    }
}
