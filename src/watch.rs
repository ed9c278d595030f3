//! Watching a directory for changed files, debounced.
//!
//! Editors and `cp` write a file in several steps; acting on the first
//! event would read a half-written file. Changes to the files of interest
//! are gathered until they have been quiet for [`QUIET`] (or for at most
//! [`LONGEST`]), then handed over as one batch. Other files are ignored
//! before debouncing, so a log file written every few milliseconds in the
//! same directory cannot hold a batch back. The watching thread blocks on
//! the kernel (inotify), so watching costs nothing while nothing changes.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use notify::{RecommendedWatcher, RecursiveMode, Watcher};

/// How long the files of interest must be quiet before a batch is handed over.
pub const QUIET: Duration = Duration::from_millis(150);
/// A batch is handed over at the latest this long after its first change.
pub const LONGEST: Duration = Duration::from_secs(1);

/// Watches `dir` for files for which `wanted` is true; each item of the
/// returned receiver is a batch of such paths that were created or
/// modified. Dropping the watcher stops it.
pub fn watch(
    dir: &Path,
    recursive: bool,
    wanted: fn(&Path) -> bool,
) -> Result<(RecommendedWatcher, Receiver<Vec<PathBuf>>)> {
    let (raw_tx, raw_rx) = channel::<notify::Result<notify::Event>>();
    let mut watcher = notify::recommended_watcher(raw_tx).context("could not start a file watcher")?;
    let mode = if recursive {
        RecursiveMode::Recursive
    } else {
        RecursiveMode::NonRecursive
    };
    watcher
        .watch(dir, mode)
        .with_context(|| format!("could not watch {}", dir.display()))?;
    let (tx, rx) = channel();
    std::thread::Builder::new()
        .name("pyreload-watch".into())
        .spawn(move || {
            while let Ok(first) = raw_rx.recv() {
                let mut batch = BTreeSet::new();
                if !add(&mut batch, first, wanted) {
                    continue;
                }
                let started = Instant::now();
                let mut last_wanted = started;
                loop {
                    let quiet_for = last_wanted.elapsed();
                    if quiet_for >= QUIET || started.elapsed() >= LONGEST {
                        break;
                    }
                    match raw_rx.recv_timeout(QUIET - quiet_for) {
                        // Only a change to a file of interest restarts the quiet period.
                        Ok(event) => {
                            if add(&mut batch, event, wanted) {
                                last_wanted = Instant::now();
                            }
                        }
                        Err(RecvTimeoutError::Timeout) => break,
                        Err(RecvTimeoutError::Disconnected) => return,
                    }
                }
                if !batch.is_empty() && tx.send(batch.into_iter().collect()).is_err() {
                    return;
                }
            }
        })
        .context("could not start the watch thread")?;
    Ok((watcher, rx))
}

/// Adds the wanted paths of a create or modify event; returns whether any
/// was added.
fn add(batch: &mut BTreeSet<PathBuf>, event: notify::Result<notify::Event>, wanted: fn(&Path) -> bool) -> bool {
    let Ok(event) = event else { return false };
    if !(event.kind.is_create() || event.kind.is_modify()) {
        return false;
    }
    let before = batch.len();
    batch.extend(event.paths.into_iter().filter(|p| wanted(p)));
    batch.len() > before
}
