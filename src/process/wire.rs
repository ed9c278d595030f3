//! The facts about one process that its state keeps and the control
//! protocol carries: identity and tree position, version, history, the
//! update in progress. They live in this bottom layer because
//! [`super::state::ProcessState`] stores them; `control::protocol`
//! re-exports them for the wire.

use serde::{Deserialize, Serialize};

/// What `pyreload status` shows about a program.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProgramInfo {
    pub name: String,
    pub pid: u32,
    pub version: Option<String>,
    /// Seconds since the Unix epoch.
    pub started_at: f64,
    pub uptime_s: f64,
    pub socket: String,
    pub history: Vec<HistoryEntry>,
    /// Committed updates `pyreload rollback` would undo, newest first.
    #[serde(default)]
    pub rollback: Vec<RollbackInfo>,
    /// The update (or rollback) running now, if any.
    #[serde(default)]
    pub in_progress: Option<InProgress>,
    /// Objects of earlier versions that are still alive (see
    /// `engine::retained`).
    #[serde(default)]
    pub retained: Retained,
    /// Where this process sits in its program's process tree: the root
    /// (`pyreload run`) has `root_pid == pid`; a forked member has its own.
    /// Old hosts sent neither, so both default (0 reads as "not known").
    #[serde(default)]
    pub root_pid: u32,
    #[serde(default)]
    pub ppid: u32,
    /// The process's command line as `ps` shows it (a proctitle such as
    /// `gunicorn: worker [app]` once the program set one).
    #[serde(default)]
    pub role: String,
    /// The other live members of the tree, as the root found them when it
    /// answered (only the root lists them; a member's list is empty).
    #[serde(default)]
    pub members: Vec<MemberInfo>,
    /// An update `pyreload prepare` left prepared, waiting for `pyreload
    /// commit` or `abort` (or its lease to end).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prepared: Option<Box<PreparedInfo>>,
    /// The program has begun to exit (a worker retiring): it takes no new
    /// update, and finishes the one in progress first.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub exiting: bool,
}

/// A prepared update (see `engine::prepared`): staged, holding the
/// update gate, waiting for its commit.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PreparedInfo {
    /// `<pid>-<instance>-<n>`: the program's pid, a token of this run of
    /// the program, and a counter.
    pub id: String,
    pub update: String,
    pub spec: String,
    /// Seconds since the Unix epoch.
    pub prepared_at: f64,
    pub expires_at: f64,
    /// Seconds left on the lease when the status was taken.
    pub lease_left_s: f64,
}

/// What became of a prepared update, as `pyreload commit` and `abort`
/// answer once it is over.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PreparedFate {
    pub id: String,
    pub update: String,
    /// `prepared`, `committed`, `rolled_back`, `aborted`, `expired` or
    /// `cancelled` (the program began to exit).
    pub state: String,
    /// When it got there, in seconds since the Unix epoch.
    pub at: f64,
    /// Why, in words.
    pub why: String,
}

/// One member of a program's process tree, as the root's `status` shows
/// it: a process forked from the program (at any depth) that has its own
/// control socket.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MemberInfo {
    pub pid: u32,
    pub ppid: u32,
    pub root_pid: u32,
    /// See [`ProgramInfo::role`].
    pub role: String,
    pub version: Option<String>,
    pub socket: String,
    /// When the process started, in clock ticks since boot (field 22 of
    /// `/proc/<pid>/stat`): with the pid, names the process even if the pid
    /// is reused later.
    pub start_ticks: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_progress: Option<InProgress>,
    /// See [`ProgramInfo::exiting`].
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub exiting: bool,
    /// Why the member did not answer, if it did not (then `version` and
    /// `in_progress` are not known).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unreachable: Option<String>,
}

/// A tree-wide update as its coordinator sees it now, for the progress
/// `pyreload apply` shows while it waits.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TreeProgress {
    pub update: String,
    /// The round: prepare, stage, freeze, commit, release.
    pub round: String,
    pub members: Vec<MemberProgress>,
}

/// One member in a [`TreeProgress`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MemberProgress {
    pub pid: u32,
    pub role: String,
    /// Where it stands: invited, prepared, staged, frozen, merged, done.
    pub stand: String,
    /// What holds its safe point back, if it said.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub waiting_for: Vec<String>,
}

/// An update the host is working on, and how far it has got.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InProgress {
    pub update: String,
    pub phase: Phase,
    /// Seconds since the Unix epoch.
    pub started_at: f64,
    /// When the current phase began, in seconds since the Unix epoch.
    pub phase_started_at: f64,
}

/// The phases of an update, in order. Before `commit` an update can still
/// be cancelled with nothing changed; from `commit` on it runs to its end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Reading and compiling sources, resolving names.
    Prepare,
    /// Waiting for the safe point.
    Wait,
    /// Running the new module bodies into staging modules.
    Stage,
    /// In the stopped world: merge, transforms, `[check] after`, or the
    /// undo of a rollback.
    Commit,
    /// After the pause: a lazy migration converting the rest.
    Sweep,
    /// Staged by `pyreload prepare`, the program running the old version,
    /// waiting for `pyreload commit` or `abort`.
    Prepared,
}

impl Phase {
    pub fn name(self) -> &'static str {
        match self {
            Phase::Prepare => "prepare",
            Phase::Wait => "wait",
            Phase::Stage => "stage",
            Phase::Commit => "commit",
            Phase::Sweep => "sweep",
            Phase::Prepared => "prepared",
        }
    }
}

/// How many objects from earlier versions are still alive: staging modules
/// and the new versions of classes, whose contents the commit merged into
/// the live ones. Each should be freed by the garbage collector soon after
/// its update; one that lives on is kept by a reference from somewhere.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Retained {
    pub modules: usize,
    pub classes: usize,
    /// How many were tracked since the program started.
    pub tracked: usize,
    /// `update: kind name` of each still alive, oldest first (at most 20).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub alive: Vec<String>,
}

/// One committed update on the rollback stack.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RollbackInfo {
    pub name: String,
    pub from: Option<String>,
    pub to: String,
    /// Why it cannot be rolled back, if it cannot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blocked: Option<String>,
}

/// One update attempt, as remembered by the host.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HistoryEntry {
    pub name: String,
    pub from: Option<String>,
    pub to: String,
    /// Seconds since the Unix epoch.
    pub at: f64,
    pub outcome: crate::report::Outcome,
    pub pause_ms: f64,
    pub total_ms: f64,
    /// Time in each phase.
    #[serde(default)]
    pub timings: crate::report::Timings,
}

/// A module's source as it runs now and as the spec would load it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModuleSources {
    pub module: String,
    /// (path, text); None for a module new in this update, or one whose
    /// running source is not known (then `unknown` says why).
    pub running: Option<(String, String)>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unknown: Option<String>,
    pub new_path: String,
    pub new_text: String,
}

/// The program's loaded modules, for drafting a spec from what changed on
/// disk.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LoadedProgram {
    /// The program's `sys.path`, absolute.
    pub sys_path: Vec<String>,
    pub modules: Vec<LoadedModule>,
}

/// A loaded module with a source file, or a package.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LoadedModule {
    pub name: String,
    /// Its source file, absolute, if it has one.
    pub path: Option<String>,
    /// Where its submodules are found, if it is a package.
    pub search: Option<Vec<String>>,
    pub state: FileState,
}

/// A module's file on disk against the source the module runs.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum FileState {
    /// The file holds what runs (or the module has no file).
    Same,
    /// The file changed since it was loaded; `running` is what runs.
    Changed { running: String },
    /// The file is gone.
    Gone,
    /// A frozen module: the interpreter runs code built into it, not its
    /// file.
    Frozen,
    /// What runs is not known.
    Unknown { why: String },
}
