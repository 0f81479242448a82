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
//!
//! The quiet period is timed by a task of its own, so [`DebouncedWatch::next`]
//! is cancel-safe: a `select!` that drops it whenever a sample arrives
//! (every few milliseconds) neither restarts the quiet period nor loses a
//! batch.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::{Notify, mpsc};

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
    watching: HashSet<PathBuf>,
    batches: mpsc::Receiver<HashSet<PathBuf>>,
    debouncer: tokio::task::JoinHandle<()>,
}

impl Drop for DebouncedWatch {
    fn drop(&mut self) {
        self.debouncer.abort();
    }
}

impl DebouncedWatch {
    /// A watch with nothing watched yet. Starts its debounce task: call it
    /// inside a tokio runtime.
    pub fn new(debounce: Duration) -> anyhow::Result<Self> {
        let touched = Arc::new(Touched::default());
        let sink = touched.clone();
        let watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| match event {
                // Opening or reading a file changes nothing; counting it
                // would make every read of a watched file (the reloader's
                // own, too) a new batch, and so a new read, for ever.
                Ok(event) if event.kind.is_access() => {}
                Ok(event) => {
                    sink.paths.lock().expect("watch lock").extend(event.paths);
                    sink.arrived.notify_one();
                }
                Err(error) => tracing::warn!(%error, "File watch error."),
            })?;
        // Batches are rare (a person or a deploy changing files); the
        // debounce task waits when the reader is this far behind, and the
        // paths touched meanwhile gather in the next batch.
        let (ready, batches) = mpsc::channel(4);
        let debouncer = tokio::spawn(debounce_batches(touched, debounce, ready));
        Ok(DebouncedWatch {
            watcher,
            watching: HashSet::new(),
            batches,
            debouncer,
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

    /// The next batch: every path touched before a quiet spell of
    /// `debounce` (the folder itself for some events). Cancel-safe.
    pub async fn next(&mut self) -> HashSet<PathBuf> {
        match self.batches.recv().await {
            Some(batch) => batch,
            // The debounce task is gone only when this watch is dropped.
            None => std::future::pending().await,
        }
    }
}

/// Waits for an event, then for `debounce` without one, and hands over
/// every path touched meanwhile; until the watch is dropped.
async fn debounce_batches(
    touched: Arc<Touched>,
    debounce: Duration,
    ready: mpsc::Sender<HashSet<PathBuf>>,
) {
    loop {
        touched.arrived.notified().await;
        // Quiet spell: every new event restarts the wait.
        while tokio::time::timeout(debounce, touched.arrived.notified())
            .await
            .is_ok()
        {}
        let batch = std::mem::take(&mut *touched.paths.lock().expect("watch lock"));
        if !batch.is_empty() && ready.send(batch).await.is_err() {
            return;
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

    /// Regression test: in the app's `select!`, a sample every few
    /// milliseconds drops `next` long before a 50 ms quiet spell ends; the
    /// batch must arrive anyway (it never did when `next` timed the spell).
    #[tokio::test]
    async fn a_batch_arrives_even_when_next_is_dropped_over_and_over() {
        let dir = tempfile::tempdir().unwrap();
        let mut watch = DebouncedWatch::new(Duration::from_millis(50)).unwrap();
        watch.watch(dir.path()).unwrap();
        std::fs::write(dir.path().join("vigil.toml"), "x").unwrap();
        let mut ticks = tokio::time::interval(Duration::from_millis(5));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            tokio::select! {
                batch = watch.next() => {
                    assert!(batch.contains(&dir.path().join("vigil.toml")), "{batch:?}");
                    return;
                }
                _ = ticks.tick() => {
                    assert!(tokio::time::Instant::now() < deadline, "no batch while next kept being dropped");
                }
            }
        }
    }

    /// Reading a watched file is no change: the reloader reads the files
    /// it is told about, and a read that counted would feed itself.
    #[tokio::test]
    async fn reading_a_file_is_not_a_change() {
        let dir = tempfile::tempdir().unwrap();
        let (read, written) = (dir.path().join("read"), dir.path().join("written"));
        std::fs::write(&read, "x").unwrap();
        let mut watch = DebouncedWatch::new(Duration::from_millis(50)).unwrap();
        watch.watch(dir.path()).unwrap();
        for _ in 0..5 {
            std::fs::read(&read).unwrap();
        }
        std::fs::write(&written, "y").unwrap();
        // Every batch up to the one with the write: none names the file
        // that was only read.
        loop {
            let batch = tokio::time::timeout(Duration::from_secs(30), watch.next())
                .await
                .expect("a batch with the write");
            assert!(!batch.contains(&read), "{batch:?}");
            if batch.contains(&written) {
                return;
            }
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
