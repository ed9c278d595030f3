//! What one process of the hosted program knows about itself, shared
//! between the interpreter (through the `pyreload` module), the control
//! thread and the update engine.
//!
//! There is one [`ProcessState`] per process, reached with [`current`].
//! The root's is installed at startup ([`install`]). In a forked child the
//! fork hook builds a new one from what it can copy without waiting
//! ([`ProcessState::forked_from`]) and installs it with [`replace`]; the
//! parent's stays allocated and untouched, since its locks may be held by
//! threads that do not exist in the child.

use std::any::Any;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, TryLockError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::tree::Identity;
use super::wire::{HistoryEntry, InProgress, MemberInfo, Phase, ProgramInfo, Retained, RollbackInfo};

static CURRENT: AtomicPtr<ProcessState> = AtomicPtr::new(std::ptr::null_mut());

/// Makes `state` this process's state. Called once, before the
/// interpreter starts.
pub fn install(state: ProcessState) -> &'static ProcessState {
    replace(state)
}

/// Makes `state` this process's state from now on, leaking the one before
/// (never dropped: a thread may still be inside it in the parent, and in
/// a child its locks may be held forever). For the fork hook.
pub fn replace(state: ProcessState) -> &'static ProcessState {
    let state: &'static ProcessState = Box::leak(Box::new(state));
    CURRENT.store(state as *const _ as *mut _, Ordering::Release);
    state
}

/// This process's state, or None before [`install`] (never in a hosted
/// program: the host installs it before Python starts). One atomic load.
pub fn try_current() -> Option<&'static ProcessState> {
    // SAFETY: the pointer is null or was leaked by `replace`, never freed.
    unsafe { CURRENT.load(Ordering::Acquire).as_ref() }
}

/// This process's state.
///
/// # Panics
/// Before [`install`]; only code that runs inside a hosted program calls it.
pub fn current() -> &'static ProcessState {
    try_current().expect("pyreload's process state is installed before the interpreter starts")
}

/// A committed update that `pyreload rollback` can undo: the engine's
/// `engine::rollback::Committed`, kept here without this layer knowing its
/// type. It holds Python objects, so it is only made, used and dropped with
/// the GIL held, and they stay valid in a forked child, which keeps the
/// stack (a later tree-wide rollback can undo there too).
pub trait CommittedUpdate: Any + Send {
    fn name(&self) -> &str;
    /// What `status` shows about it.
    fn info(&self) -> RollbackInfo;
    /// Marks it as impossible to roll back, and why.
    fn block(&mut self, why: String);
    fn as_any(&self) -> &dyn Any;
    fn into_any(self: Box<Self>) -> Box<dyn Any>;
}

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

/// State of one process of the hosted program.
pub struct ProcessState {
    pub name: String,
    pub pid: u32,
    pub identity: Identity,
    pub started_at: SystemTime,
    pub socket_path: std::path::PathBuf,
    version: Mutex<Option<String>>,
    history: Mutex<Vec<HistoryEntry>>,
    /// The source each module runs, for the modules an update loaded. What
    /// the program imported itself is in [`super::loaded`]; the newer of
    /// the two is what runs.
    sources: Mutex<std::collections::HashMap<String, UpdateSource>>,
    /// Committed updates that `pyreload rollback` can undo, newest last,
    /// at most `rollback_depth` of them.
    committed: Mutex<Vec<Box<dyn CommittedUpdate>>>,
    rollback_depth: usize,
    /// Committed updates let go beyond the rollback depth.
    let_go: AtomicUsize,
    /// Held for the whole of an update; see [`Lifecycle`].
    lifecycle: Mutex<Lifecycle>,
    /// Set as soon as the program starts to exit, before the exit hook
    /// waits for the lifecycle lock: an update still waiting for its safe
    /// point sees it and gives up, instead of holding the exit back.
    exit_requested: AtomicBool,
    /// The update running now, for `status`.
    in_progress: Mutex<Option<InProgress>>,
    /// Answers to update requests not yet written to their client. The
    /// exit hook waits for them, so a client hears how its update ended
    /// even when the program exits right after.
    unanswered: Mutex<usize>,
    answered: Condvar,
}

/// How the history names a `pyreload rollback`: "rollback of NAME".
pub const ROLLBACK_PREFIX: &str = "rollback of ";

/// A module's source as an update loaded it.
#[derive(Clone, Debug)]
pub struct UpdateSource {
    pub path: String,
    pub text: String,
    /// When, in the order of [`super::loaded::next_seq`].
    seq: u64,
}

impl UpdateSource {
    /// A source loaded now.
    pub fn now(path: String, text: String) -> Self {
        UpdateSource {
            path,
            text,
            seq: super::loaded::next_seq(),
        }
    }
}

/// What a module runs, as far as pyreload knows.
#[derive(Clone, Debug)]
pub enum Running {
    Known {
        path: String,
        text: String,
    },
    /// Why it is not known.
    Unknown {
        why: String,
    },
}

/// How many update attempts `status` remembers, newest last.
pub const HISTORY_LIMIT: usize = 1000;

/// Why an update could not start.
#[derive(Debug, thiserror::Error)]
pub enum GateError {
    #[error("another update is in progress")]
    Busy,
    #[error("the program is exiting")]
    Exiting,
}

impl ProcessState {
    /// The root's state: the process `pyreload run` started.
    pub fn new(name: String, version: Option<String>, identity: Identity, rollback_depth: usize) -> Self {
        ProcessState {
            name,
            pid: identity.pid,
            started_at: SystemTime::now(),
            socket_path: identity.socket_path(),
            identity,
            version: Mutex::new(version),
            history: Mutex::new(Vec::new()),
            committed: Mutex::new(Vec::new()),
            rollback_depth,
            let_go: AtomicUsize::new(0),
            sources: Mutex::new(std::collections::HashMap::new()),
            lifecycle: Mutex::new(Lifecycle::Running),
            exit_requested: AtomicBool::new(false),
            in_progress: Mutex::new(None),
            unanswered: Mutex::new(0),
            answered: Condvar::new(),
        }
    }

    /// The state of a child forked from the process whose state is
    /// `parent`, built in the child's fork hook (one thread, GIL held).
    ///
    /// It keeps the name, version, history, update sources, rollback
    /// depth and committed stack, each taken with `try_lock`: a lock another
    /// thread held at the fork stays locked for good, and then the child
    /// starts without that part (said on stderr by the caller, from the
    /// returned list). Everything about an update in progress (the gate,
    /// the phase, owed answers) starts afresh: that update, and its thread,
    /// stayed in the parent.
    pub fn forked_from(parent: &ProcessState, identity: Identity) -> (ProcessState, Vec<&'static str>) {
        let mut lost = Vec::new();
        let mut take = |what: &'static str, ok: bool| {
            if !ok {
                lost.push(what);
            }
        };
        let version = parent.version.try_lock().ok().map(|v| v.clone());
        take("version", version.is_some());
        let history = parent.history.try_lock().ok().map(|h| h.clone());
        take("history", history.is_some());
        let sources = parent.sources.try_lock().ok().map(|s| s.clone());
        take("update sources", sources.is_some());
        // Moved, not copied: the parent's memory here is the child's own
        // copy, and the parent's state is never used again in the child.
        let committed = parent.committed.try_lock().ok().map(|mut c| std::mem::take(&mut *c));
        take("rollback stack", committed.is_some());
        let state = ProcessState {
            name: parent.name.clone(),
            pid: identity.pid,
            socket_path: identity.socket_path(),
            identity,
            started_at: SystemTime::now(),
            version: Mutex::new(version.flatten()),
            history: Mutex::new(history.unwrap_or_default()),
            sources: Mutex::new(sources.unwrap_or_default()),
            committed: Mutex::new(committed.unwrap_or_default()),
            rollback_depth: parent.rollback_depth,
            let_go: AtomicUsize::new(parent.let_go.load(Ordering::SeqCst)),
            lifecycle: Mutex::new(Lifecycle::Running),
            exit_requested: AtomicBool::new(false),
            in_progress: Mutex::new(None),
            unanswered: Mutex::new(0),
            answered: Condvar::new(),
        };
        (state, lost)
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
        let mut history = lock(&self.history);
        if history.len() >= HISTORY_LIMIT {
            history.remove(0);
        }
        history.push(HistoryEntry {
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

    /// Keeps a committed update for `pyreload rollback`, letting go of the
    /// oldest beyond the rollback depth (call with the GIL held: what it
    /// lets go of are Python objects).
    pub fn push_committed_update(&self, committed: Box<dyn CommittedUpdate>) {
        let mut stack = lock(&self.committed);
        stack.push(committed);
        while stack.len() > self.rollback_depth {
            let oldest = stack.remove(0);
            self.let_go.fetch_add(1, Ordering::SeqCst);
            super::log(format!(
                "pyreload: `{}` can no longer be rolled back (--rollback-depth {} keeps the newest)",
                oldest.name(),
                self.rollback_depth
            ));
        }
    }

    /// The source `module` runs: what the last update that loaded it
    /// loaded, or what the program read from `file` (the module's source
    /// file, if it has one) when it imported it, whichever came last.
    pub fn running_source(&self, module: &str, file: Option<&str>) -> Running {
        let update = lock(&self.sources).get(module).cloned();
        let import = file.and_then(super::loaded::lookup);
        match (update, import) {
            (Some(u), None) => Running::Known {
                path: u.path,
                text: u.text,
            },
            (Some(u), Some(i)) if i.seq < u.seq => Running::Known {
                path: u.path,
                text: u.text,
            },
            (_, Some(i)) => match i.text {
                Ok(text) => Running::Known {
                    path: file.unwrap_or_default().to_string(),
                    text,
                },
                Err(why) => Running::Unknown { why },
            },
            (None, None) => Running::Unknown {
                why: match file {
                    None => format!("`{module}` was not loaded from a Python source file"),
                    Some(file) => format!(
                        "pyreload did not see the program read {file} when it imported `{module}` (it came \
                         from a frozen or built-in module, a .pyc without its source, a zip file or another \
                         loader)"
                    ),
                },
            },
        }
    }

    /// Records the sources an update loaded; returns what they replace, for
    /// a rollback to put back.
    pub fn swap_sources(&self, loaded: Vec<(String, Option<UpdateSource>)>) -> Vec<(String, Option<UpdateSource>)> {
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
            last.block(why);
        }
    }

    /// Why there is nothing (more) to roll back. Called when the stack of
    /// committed updates is empty, which has three different causes.
    pub fn nothing_to_roll_back(&self) -> String {
        let let_go = self.let_go.load(Ordering::SeqCst);
        if let_go > 0 {
            return format!(
                "there is nothing more to roll back: the {let_go} oldest update(s) were let go (the program keeps the newest {}, see `pyreload run --rollback-depth`)",
                self.rollback_depth
            );
        }
        let (applied, rolled_back) = lock(&self.history)
            .iter()
            .filter(|h| h.outcome == crate::report::Outcome::Committed)
            .fold((0, 0), |(a, r), h| {
                if h.name.starts_with(ROLLBACK_PREFIX) {
                    (a, r + 1)
                } else {
                    (a + 1, r)
                }
            });
        let version = self.version().unwrap_or_else(|| "(none)".into());
        match (applied, rolled_back) {
            (0, _) => "there is nothing to roll back: no update has been applied since the program started".into(),
            (a, r) => format!(
                "there is nothing more to roll back: {a} update(s) were applied since the program started and {r} rolled back, so it runs the version it started with ({version}); `pyreload status` shows the history"
            ),
        }
    }

    /// Takes the newest committed update off the stack (GIL held).
    pub fn pop_committed_update(&self) -> Option<Box<dyn CommittedUpdate>> {
        lock(&self.committed).pop()
    }

    /// Runs `f` on the newest committed update, if there is one.
    pub fn with_last_committed_update<R>(&self, f: impl FnOnce(&dyn CommittedUpdate) -> R) -> Option<R> {
        lock(&self.committed).last().map(|c| f(c.as_ref()))
    }

    /// What `status` shows about this process. `retained` comes from the
    /// engine, which tracks those objects; the tree's other members are
    /// added by whoever asks them (only the root does).
    pub fn info(&self, retained: Retained) -> ProgramInfo {
        ProgramInfo {
            name: self.name.clone(),
            pid: self.pid,
            version: self.version(),
            started_at: unix_seconds(self.started_at),
            uptime_s: self.started_at.elapsed().map(|d| d.as_secs_f64()).unwrap_or(0.0),
            socket: self.socket_path.display().to_string(),
            history: lock(&self.history).clone(),
            rollback: lock(&self.committed).iter().rev().map(|c| c.info()).collect(),
            in_progress: self.in_progress(),
            retained,
            root_pid: self.identity.root_pid,
            ppid: self.identity.ppid,
            role: super::tree::role(self.pid),
            members: Vec::new(),
            prepared: None,
            exiting: self.exit_requested(),
        }
    }

    /// What this process says about itself as a member of its tree (the
    /// answer to `MemberStatus`).
    pub fn member_info(&self) -> MemberInfo {
        MemberInfo {
            pid: self.pid,
            ppid: self.identity.ppid,
            root_pid: self.identity.root_pid,
            role: super::tree::role(self.pid),
            version: self.version(),
            socket: self.socket_path.display().to_string(),
            start_ticks: super::tree::proc_stat(self.pid).map(|s| s.start_ticks).unwrap_or(0),
            in_progress: self.in_progress(),
            exiting: self.exit_requested(),
            unreachable: None,
        }
    }

    /// The update running now, if any.
    pub fn in_progress(&self) -> Option<InProgress> {
        lock(&self.in_progress).clone()
    }

    /// Records that `update` has begun, in `phase`.
    pub fn set_in_progress(&self, update: &str, phase: Phase) {
        let now = unix_seconds(SystemTime::now());
        let mut current = lock(&self.in_progress);
        match current.as_mut() {
            Some(p) if p.update == update => {
                if p.phase != phase {
                    p.phase = phase;
                    p.phase_started_at = now;
                }
            }
            _ => {
                *current = Some(InProgress {
                    update: update.to_string(),
                    phase,
                    started_at: now,
                    phase_started_at: now,
                })
            }
        }
    }

    pub fn clear_in_progress(&self) {
        *lock(&self.in_progress) = None;
    }

    /// Whether the program has started to exit.
    pub fn exit_requested(&self) -> bool {
        self.exit_requested.load(Ordering::SeqCst)
    }

    /// Counts an answer owed to a client until the returned guard drops
    /// (after the answer is written).
    pub fn owe_answer(&self) -> AnswerOwed<'_> {
        *lock(&self.unanswered) += 1;
        AnswerOwed { state: self }
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

    /// [`ProcessState::begin_update`], waiting up to `patience` for an
    /// update that holds the gate to end. For a tree member: its
    /// coordinator runs one update at a time, so a gate still held is
    /// usually the last update's conversation finishing (taking the GIL
    /// back after its final word, on a busy worker), not a second update.
    pub fn begin_update_within(&self, patience: Duration) -> Result<MutexGuard<'_, Lifecycle>, GateError> {
        let until = Instant::now() + patience;
        loop {
            match self.begin_update() {
                Err(GateError::Busy) if Instant::now() < until => std::thread::sleep(Duration::from_micros(500)),
                other => return other,
            }
        }
    }

    /// Called from the interpreter's `atexit` hook, without the GIL: makes
    /// an update that still waits give up, waits for an update in progress
    /// to end, forbids new ones, and gives the last answers up to `linger`
    /// to reach their clients.
    pub fn mark_exiting(&self, linger: Duration) {
        // A process forked from the program runs the same exit hook. Its
        // control thread, and any update in progress, stayed in the
        // parent, and the locks it inherited may be held by threads that
        // do not exist in it: waiting on them would hang its exit forever.
        if std::process::id() != self.pid {
            return;
        }
        self.exit_requested.store(true, Ordering::SeqCst);
        *lock(&self.lifecycle) = Lifecycle::Exiting;
        let deadline = Instant::now() + linger;
        let mut owed = lock(&self.unanswered);
        while *owed > 0 {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            owed = self
                .answered
                .wait_timeout(owed, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }
}

/// An answer a client is owed; see [`ProcessState::owe_answer`].
pub struct AnswerOwed<'a> {
    state: &'a ProcessState,
}

impl Drop for AnswerOwed<'_> {
    fn drop(&mut self) {
        let mut owed = lock(&self.state.unanswered);
        *owed = owed.saturating_sub(1);
        self.state.answered.notify_all();
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

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> ProcessState {
        let identity = crate::process::tree::Identity::root(std::env::temp_dir());
        ProcessState::new("test".into(), None, identity, 4)
    }

    #[test]
    fn a_gate_held_a_little_longer_is_waited_for_and_one_held_on_is_busy() {
        let state = state();
        let (taken_tx, taken_rx) = std::sync::mpsc::channel();
        let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
        std::thread::scope(|s| {
            let state = &state;
            s.spawn(move || {
                let gate = state.begin_update().unwrap();
                taken_tx.send(()).unwrap();
                go_rx.recv().unwrap();
                drop(gate);
            });
            taken_rx.recv().unwrap();
            assert!(matches!(state.begin_update(), Err(GateError::Busy)));
            assert!(matches!(
                state.begin_update_within(Duration::from_millis(20)),
                Err(GateError::Busy)
            ));
            // Let go while the next one waits: it gets the gate.
            std::thread::scope(|inner| {
                let waiter = inner.spawn(|| state.begin_update_within(Duration::from_secs(60)).is_ok());
                go_tx.send(()).unwrap();
                assert!(waiter.join().unwrap());
            });
        });
    }
}
