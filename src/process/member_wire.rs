//! The conversation between a tree's coordinator (in the root) and one of
//! its members, on a control connection opened with a `member` request.
//!
//! The coordinator sends [`Step`]s; the member answers each with one
//! [`MemberReply`] (and, while it waits for its safe point, any number of
//! [`MemberReply::Waiting`] first). The order of a conversation:
//!
//! ```text
//! Member{spec}  -> Prepared{modules} | Refused
//! Continue      -> Waiting* then Staged | Refused | Cancelled
//! Commit*       -> Waiting* then Released{report} | RolledBack | Refused
//!   Keep        -> (nothing: the new version stays)
//!   Revert      -> Undone{report}               (rolled back: the old version runs)
//! Abort (any time before Commit) -> Aborted
//! ```
//!
//! Every member commits on its own, at its own safe point, with its own
//! pause, as a program without members does: the tree's two phases are
//! "every member staged" and then "every member committed", and a member
//! that fails its commit has the others' commits rolled back (`Revert`).
//! `Commit*` goes to every staged member at once, as a ring of the
//! update's bell ([`super::bell`]); a member that joined late is sent it.
//!
//! A member never waits for its coordinator forever: staged, its wait is
//! bounded by the spec's `timeout_ms` and then it decides through the
//! decision file (see `crate::engine::member::decide`); committed, it
//! keeps its commit once its coordinator is gone.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::bell::Ear;
use crate::diagnostic::Problem;
use crate::report::Report;

/// What the coordinator asks a member to do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    /// Every member prepared and the update covers the tree: wait for the
    /// safe point and stage.
    Continue,
    /// Every member staged: commit at the safe point, as a program alone.
    Commit,
    /// Every member committed: the commit stands.
    Keep,
    /// Another member failed its commit: roll this one's back.
    Revert,
    /// Give up before the commit; nothing changed.
    Abort,
}

/// What a member conversation is for.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Mode {
    /// Apply the spec: the conversation above.
    #[default]
    Update,
    /// `pyreload check`: resolve the spec, say what would block and what
    /// would change, and answer `Checked`; nothing runs, nothing changes.
    Check,
    /// `pyreload rollback` of the whole tree: undo `update`, the tree's
    /// last, in every member that took part in it, with the same rounds
    /// as an update (prepare: can it be undone here; commit: undo it).
    Rollback(RollbackOrder),
}

/// A tree-wide rollback, as the coordinator asks it of each member.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RollbackOrder {
    /// The name of the update to undo.
    pub update: String,
    /// The modules it changed: a member that loads none of them had no
    /// part in it, and only follows the tree's version.
    pub modules: Vec<String>,
    /// The version the tree returns to.
    pub to: Option<String>,
    /// How long each member waits for its rollback's safe point.
    pub timeout_ms: u64,
    /// `rollback --check`: each member only says whether it could.
    #[serde(default)]
    pub dry_run: bool,
}

/// A member's answer to a [`Step`].
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum MemberReply {
    /// Resolved: the spec's modules this member has loaded (empty for a
    /// member that loads none, which takes no further part).
    Prepared {
        modules: Vec<String>,
        version: Option<String>,
    },
    /// Still waiting for its safe point, and why.
    Waiting {
        why: Vec<String>,
    },
    Staged,
    /// The answer of a `check` conversation, which ends with it.
    Checked {
        modules: Vec<String>,
        report: Box<Report>,
    },
    /// `[tree] commit = "together"`: stopped at its safe point and merged,
    /// with its world still stopped; waits for the release.
    Merged,
    /// The member's own commit failed and was undone (its report says why).
    RolledBack {
        report: Box<Report>,
    },
    /// The member runs the new version.
    Released {
        report: Box<Report>,
        /// When it did its part after the bell: the tree's skew is the
        /// spread of the `released_ns`.
        at: CommitInstants,
        /// It forked since it was invited: a child of it may run the old
        /// version without having been asked.
        forked: bool,
    },
    /// The member's commit was rolled back; it runs the old version.
    Undone {
        report: Box<Report>,
    },
    /// Refused before anything changed (its report says why).
    Refused {
        report: Box<Report>,
    },
    /// Gave up before the commit, on the coordinator's word or its own.
    Aborted {
        report: Box<Report>,
    },
    /// The member began to exit (a worker retired by its supervisor):
    /// it takes no part, and that is no failure of the update.
    Exiting,
    /// The request could not be served (busy, bad step).
    Error {
        problem: Problem,
    },
}

/// When a member did each step of its commit after the bell, on
/// `CLOCK_MONOTONIC` in nanoseconds (the same clock in every process, so
/// the coordinator subtracts its own ring's instant). Apart, they say
/// where a late member's time went: waiting for a core (`woke_ns`), for
/// the program's thread to hand over the GIL (`gil_ns`), or stopping its
/// threads, looking for the safe point and merging (`released_ns`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitInstants {
    /// Its pyreload thread ran again, having heard the bell.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub woke_ns: Option<u64>,
    /// That thread held the GIL again (none where it never let go of it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gil_ns: Option<u64>,
    /// It let its world go on the new version.
    pub released_ns: u64,
}

/// `CLOCK_MONOTONIC` now, in nanoseconds.
pub fn monotonic_ns() -> u64 {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).expect("CLOCK_MONOTONIC exists on Linux");
    t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64
}

/// What the coordinator asks of a member, from its `member` request.
pub struct Invitation {
    pub mode: Mode,
    /// A child the coordinator found after its parent committed. One that
    /// runs the update's version already was forked after that commit,
    /// from the new version: it takes no part.
    pub born_late: bool,
    pub spec_path: String,
    pub spec_text: String,
    /// Where the decision is recorded (`engine::member::decide`).
    pub decision: PathBuf,
    /// How long the coordinator may hold this member staged before it
    /// commits (a prepared update's lease; zero for `apply`).
    pub hold: Duration,
}

/// A member's connection to its coordinator, as the engine drives it.
pub trait Link: Send {
    fn send(&mut self, reply: &MemberReply) -> io::Result<()>;
    /// The next step, or an error once `timeout` has passed or the
    /// coordinator is gone.
    fn recv(&mut self, timeout: Duration) -> io::Result<Step>;
    /// As [`Link::recv`], or `None` as soon as `ear`'s bell has rung: the
    /// step every staged member takes at once (see [`super::bell`]).
    fn recv_or_ring(&mut self, timeout: Duration, ear: &Ear) -> io::Result<Option<Step>>;
    /// Something that sends notes ([`MemberReply::Waiting`]) while the
    /// member is busy: called from the member's own thread, between its
    /// other sends.
    fn notifier(&self) -> Box<dyn Fn(&MemberReply) + Send + Sync>;
}
