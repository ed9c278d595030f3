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
//! Freeze        -> Frozen | Blocked{why}        (Blocked: the world runs again)
//!   Thaw        -> Thawed                       (back to Staged; Freeze again later)
//!   Commit      -> Merged | RolledBack          (the world stays stopped)
//!     Release   -> Released{report}             (the new version runs)
//!     Undo      -> Undone{report}               (the old version runs)
//! Abort (any time before Commit) -> Aborted
//! ```
//!
//! A member never waits for its coordinator forever: before the freeze its
//! wait is bounded by the spec's `timeout_ms`, and once frozen by a lease,
//! after which it decides through the decision file (see `crate::tree`).

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::diagnostic::Problem;
use crate::report::Report;

/// What the coordinator asks a member to do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    /// Every member prepared and the update covers the tree: wait for the
    /// safe point and stage.
    Continue,
    /// Stop every thread and decide the safe point again.
    Freeze,
    /// Another member was blocked: let the world go, stay staged.
    Thaw,
    /// Every member is frozen: merge, transform and check, stay stopped.
    Commit,
    /// Every member merged and the decision is "commit": let the world go.
    Release,
    /// Another member failed: undo the merge, then let the world go.
    Undo,
    /// Give up before the commit; nothing changed.
    Abort,
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
    Frozen,
    /// The safe point did not hold with the world stopped.
    Blocked {
        why: Vec<String>,
    },
    Thawed,
    Merged,
    /// The member's own commit failed and was undone (its report says why).
    RolledBack {
        report: Box<Report>,
    },
    /// The member runs the new version.
    Released {
        report: Box<Report>,
        /// `CLOCK_MONOTONIC` when it let its world go, in nanoseconds: the
        /// same clock in every process, so the tree's skew is the spread.
        released_at_ns: u64,
    },
    /// The member's merge was undone; it runs the old version.
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

/// `CLOCK_MONOTONIC` now, in nanoseconds.
pub fn monotonic_ns() -> u64 {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).expect("CLOCK_MONOTONIC exists on Linux");
    t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64
}

/// What the coordinator asks of a member, from its `member` request.
pub struct Invitation {
    pub spec_path: String,
    pub spec_text: String,
    /// Where the decision is recorded (`engine::member::decide`).
    pub decision: PathBuf,
    /// How long the coordinator may hold this member staged before it
    /// freezes it (a prepared update's lease; zero for `apply`).
    pub hold: Duration,
}

/// A member's connection to its coordinator, as the engine drives it.
pub trait Link: Send {
    fn send(&mut self, reply: &MemberReply) -> io::Result<()>;
    /// The next step, or an error once `timeout` has passed or the
    /// coordinator is gone.
    fn recv(&mut self, timeout: Duration) -> io::Result<Step>;
    /// Something that sends notes ([`MemberReply::Waiting`]) while the
    /// member is busy: called from the member's own thread, between its
    /// other sends.
    fn notifier(&self) -> Box<dyn Fn(&MemberReply) + Send + Sync>;
}
