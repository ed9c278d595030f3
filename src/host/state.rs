//! What the host knows about the program it runs, shared between the
//! interpreter (through the `pyreload` module), the control thread and the
//! update engine.

use std::sync::{Mutex, MutexGuard, TryLockError};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::control::protocol::{HistoryEntry, ProgramInfo};
use crate::engine::rollback::Committed;

/// Whether Python may still be entered from the control thread.
///
/// Once the interpreter starts finalising, attaching a new thread to it makes
/// CPython end that thread with `pthread_exit`, which is undefined behaviour
/// for a Rust thread. The `atexit` hook flips this to `Exiting` while holding
/// the lock, so an update that is running finishes first and no later update
/// starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lifecycle {
    Running,
    Exiting,
}

/// State of one hosted program.
pub struct HostState {
    pub name: String,
    pub pid: u32,
    pub started_at: SystemTime,
    pub socket_path: std::path::PathBuf,
    version: Mutex<Option<String>>,
    history: Mutex<Vec<HistoryEntry>>,
    /// The source each module runs, for the modules pyreload loaded: name ->
    /// (path, text). Other modules run the file their `__spec__` names.
    sources: Mutex<std::collections::HashMap<String, (String, String)>>,
    /// Committed updates that `pyreload rollback` can undo, newest last.
    committed: Mutex<Vec<Committed>>,
    /// Held for the whole of an update; see [`Lifecycle`].
    lifecycle: Mutex<Lifecycle>,
}

/// Why an update could not start.
#[derive(Debug, thiserror::Error)]
pub enum GateError {
    #[error("another update is in progress")]
    Busy,
    #[error("the program is exiting")]
    Exiting,
}

impl HostState {
    pub fn new(name: String, version: Option<String>, socket_path: std::path::PathBuf) -> Self {
        HostState {
            name,
            pid: std::process::id(),
            started_at: SystemTime::now(),
            socket_path,
            version: Mutex::new(version),
            history: Mutex::new(Vec::new()),
            committed: Mutex::new(Vec::new()),
            sources: Mutex::new(std::collections::HashMap::new()),
            lifecycle: Mutex::new(Lifecycle::Running),
        }
    }

    /// The version the program runs now, if it was started with one or has
    /// been updated to one.
    pub fn version(&self) -> Option<String> {
        lock(&self.version).clone()
    }

    pub fn set_version(&self, version: Option<String>) {
        *lock(&self.version) = version;
    }

    /// Adds an update attempt, whatever its outcome, to the history.
    pub fn record_attempt(&self, report: &crate::report::Report) {
        lock(&self.history).push(HistoryEntry {
            name: report.update.clone(),
            from: report.from.clone(),
            to: report.to.clone(),
            at: unix_seconds(SystemTime::now()),
            outcome: report.outcome,
            pause_ms: report.timings.pause_ms,
            total_ms: report.timings.total_ms,
            timings: report.timings.clone(),
        });
    }

    pub fn push_committed(&self, committed: Committed) {
        lock(&self.committed).push(committed);
    }

    /// The source a module runs, if pyreload loaded it.
    pub fn running_source(&self, module: &str) -> Option<(String, String)> {
        lock(&self.sources).get(module).cloned()
    }

    /// Records the sources an update loaded; returns what they replace, for
    /// a rollback to put back.
    pub fn swap_sources(
        &self,
        loaded: Vec<(String, Option<(String, String)>)>,
    ) -> Vec<(String, Option<(String, String)>)> {
        let mut sources = lock(&self.sources);
        loaded
            .into_iter()
            .map(|(module, source)| {
                let previous = match source {
                    Some(s) => sources.insert(module.clone(), s),
                    None => sources.remove(&module),
                };
                (module, previous)
            })
            .collect()
    }

    /// Marks the last committed update as impossible to roll back.
    pub fn block_last_committed(&self, why: String) {
        if let Some(last) = lock(&self.committed).last_mut() {
            last.blocked = Some(why);
        }
    }

    pub fn pop_committed(&self) -> Option<Committed> {
        lock(&self.committed).pop()
    }

    pub fn with_last_committed<R>(&self, f: impl FnOnce(&Committed) -> R) -> Option<R> {
        lock(&self.committed).last().map(f)
    }

    pub fn info(&self) -> ProgramInfo {
        ProgramInfo {
            name: self.name.clone(),
            pid: self.pid,
            version: self.version(),
            started_at: unix_seconds(self.started_at),
            uptime_s: self.started_at.elapsed().map(|d| d.as_secs_f64()).unwrap_or(0.0),
            socket: self.socket_path.display().to_string(),
            history: lock(&self.history).clone(),
            rollback: lock(&self.committed).iter().rev().map(Committed::info).collect(),
        }
    }

    /// Takes the right to enter Python for an update. Refuses at once,
    /// rather than queueing, when another update holds it: two applies are
    /// never both half-done, and the second user learns why immediately.
    pub fn begin_update(&self) -> Result<MutexGuard<'_, Lifecycle>, GateError> {
        let guard = match self.lifecycle.try_lock() {
            Ok(guard) => guard,
            Err(TryLockError::WouldBlock) => return Err(GateError::Busy),
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
        };
        match *guard {
            Lifecycle::Running => Ok(guard),
            Lifecycle::Exiting => Err(GateError::Exiting),
        }
    }

    /// Called from the interpreter's `atexit` hook, without the GIL: waits
    /// for an update in progress, then forbids new ones.
    pub fn mark_exiting(&self) {
        *lock(&self.lifecycle) = Lifecycle::Exiting;
    }
}

/// Locks a mutex whose data stays valid even if a holder panicked: every
/// value behind these locks is replaced whole, never left half-written.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Removes the control socket, unless this process is a child forked from
/// the program: it inherits the exit hooks, but the socket is its parent's.
pub fn remove_own_socket(path: &std::path::Path) {
    if path.file_stem().and_then(|s| s.to_str()) == Some(std::process::id().to_string().as_str()) {
        let _ = std::fs::remove_file(path);
    }
}

pub fn unix_seconds(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}
