//! Watching folders for changes, debounced: the one place that talks to
//! `notify`, used for rule files and for the config file.
//!
//! Folders are watched rather than files: editors and deploy tools replace
//! files (write-then-rename, delete-then-create, a symlink flipped to a new
//! version directory as Kubernetes does with ConfigMaps), and a watch on
//! the old inode would miss all of them.
//!
//! Touched paths are collected in a set until `debounce` passes without a
//! new event, then handed over as one batch. Memory is bounded by the
//! number of distinct paths touched, however many events arrive.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::Notify;

/// Paths touched since the last batch, shared with notify's callback.
#[derive(Default)]
struct Touched {
    paths: Mutex<HashSet<PathBuf>>,
    arrived: Notify,
}

/// A set of watched folders yielding debounced batches of touched paths.
pub struct DebouncedWatch {
    // Dropping the watcher ends the watch.
    watcher: notify::RecommendedWatcher,
    touched: Arc<Touched>,
    watching: HashSet<PathBuf>,
    debounce: Duration,
}

impl DebouncedWatch {
    /// A watch with nothing watched yet.
    pub fn new(debounce: Duration) -> anyhow::Result<Self> {
        let touched = Arc::new(Touched::default());
        let sink = touched.clone();
        let watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| match event {
                Ok(event) => {
                    sink.paths.lock().expect("watch lock").extend(event.paths);
                    sink.arrived.notify_one();
                }
                Err(error) => tracing::warn!(%error, "File watch error."),
            })?;
        Ok(DebouncedWatch {
            watcher,
            touched,
            watching: HashSet::new(),
            debounce,
        })
    }

    /// Watches `folder` (not its subfolders); watching it again is a no-op.
    pub fn watch(&mut self, folder: &Path) -> anyhow::Result<()> {
        if self.watching.contains(folder) {
            return Ok(());
        }
        self.watcher
            .watch(folder, RecursiveMode::NonRecursive)
            .map_err(|error| anyhow::anyhow!("cannot watch `{}`: {error}", folder.display()))?;
        self.watching.insert(folder.to_path_buf());
        Ok(())
    }

    /// The next batch: waits for an event, then for `debounce` without one,
    /// and returns every path touched meanwhile (the folder itself for some
    /// events).
    pub async fn next(&mut self) -> HashSet<PathBuf> {
        loop {
            // Paths may be waiting already (a caller that gave up on an
            // earlier `next` leaves them here).
            let waiting = !self.touched.paths.lock().expect("watch lock").is_empty();
            if !waiting {
                self.touched.arrived.notified().await;
            }
            // Quiet spell: every new event restarts the wait.
            while tokio::time::timeout(self.debounce, self.touched.arrived.notified())
                .await
                .is_ok()
            {}
            let batch = std::mem::take(&mut *self.touched.paths.lock().expect("watch lock"));
            if !batch.is_empty() {
                return batch;
            }
        }
    }
}

/// The folder a file lives in (`.` for a bare file name): what to watch
/// for changes to that file.
pub fn folder_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_touched_path_arrives_in_a_batch() {
        let dir = tempfile::tempdir().unwrap();
        let mut watch = DebouncedWatch::new(Duration::from_millis(50)).unwrap();
        watch.watch(dir.path()).unwrap();
        watch.watch(dir.path()).unwrap();
        for name in ["a", "b", "a"] {
            std::fs::write(dir.path().join(name), name).unwrap();
        }
        let mut seen = HashSet::new();
        let wanted = [dir.path().join("a"), dir.path().join("b")];
        while !wanted.iter().all(|path| seen.contains(path)) {
            let batch = tokio::time::timeout(Duration::from_secs(30), watch.next())
                .await
                .unwrap_or_else(|_| panic!("no batch with {wanted:?}; seen {seen:?}"));
            seen.extend(batch);
        }
    }

    #[test]
    fn a_bare_file_name_lives_in_the_current_folder() {
        assert_eq!(folder_of(Path::new("vigil.toml")), PathBuf::from("."));
        assert_eq!(
            folder_of(Path::new("/etc/vigil.toml")),
            PathBuf::from("/etc")
        );
    }
}
