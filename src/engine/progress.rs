//! An update in progress: the phase `pyreload status` shows, and the two
//! reasons to give up before the commit.
//!
//! Until the commit starts, nothing in the program has changed, so an
//! update can stop cleanly. It does when nobody waits for it any more (the
//! `pyreload apply` that asked was interrupted or killed) or when the
//! program starts to exit. It checks at each phase boundary and at every
//! safe-point check while it waits. From the commit on, an update runs to
//! its end: committed, or rolled back.

use crate::diagnostic::Problem;
use crate::process::state::ProcessState;
use crate::process::wire::Phase;

pub use crate::process::ClientGone;

/// Where a [`Progress`] tells what holds the safe point back.
pub type Tell<'a> = Box<dyn Fn(&[String]) + Send + Sync + 'a>;

/// One update's progress, visible in `status` until dropped.
pub struct Progress<'a> {
    state: &'a ProcessState,
    update: String,
    client_gone: Option<ClientGone<'a>>,
    /// Told what holds the safe point back, each time that changes (a tree
    /// member tells its coordinator).
    on_blocked: Option<Tell<'a>>,
    last_blocked: std::sync::Mutex<Vec<String>>,
    /// Goes on while the program exits: an undo that keeps the process
    /// from exiting on a version its tree gave up.
    through_exit: bool,
}

impl<'a> Progress<'a> {
    /// Starts showing `update` as in progress, in `prepare`. `client_gone`
    /// is None when nobody waits for the answer (`run --reload`).
    pub fn begin(state: &'a ProcessState, update: &str, client_gone: Option<ClientGone<'a>>) -> Progress<'a> {
        state.set_in_progress(update, Phase::Prepare);
        super::fault::hold(Phase::Prepare);
        Progress {
            state,
            update: update.to_string(),
            client_gone,
            on_blocked: None,
            last_blocked: std::sync::Mutex::new(Vec::new()),
            through_exit: false,
        }
    }

    /// Does not give up when the program begins to exit. For a tree
    /// member undoing its commit because another member failed: its exit
    /// waits for the update (the exit hook holds it), and the report must
    /// not say it rolled back when it did not.
    pub fn through_exit(mut self) -> Self {
        self.through_exit = true;
        self
    }

    /// Has `on_blocked` told what holds the safe point back, each time
    /// that changes.
    pub fn telling(mut self, on_blocked: Tell<'a>) -> Self {
        self.on_blocked = Some(on_blocked);
        self
    }

    /// What held the safe point back at the last check.
    pub fn blocked(&self, why: Vec<String>) {
        let Some(tell) = &self.on_blocked else { return };
        let mut last = self.last_blocked.lock().unwrap_or_else(|p| p.into_inner());
        if *last != why {
            tell(&why);
            *last = why;
        }
    }

    pub fn enter(&self, phase: Phase) {
        self.state.set_in_progress(&self.update, phase);
        super::fault::hold(phase);
    }

    /// Why the update must stop now, if it must. Only ask before the commit.
    pub fn abandoned(&self) -> Option<Problem> {
        if self.state.exit_requested() && !self.through_exit {
            return Some(Problem::new(
                "the program began to exit while the update was in progress; nothing was changed",
            ));
        }
        if self.client_gone.is_some_and(|gone| gone()) {
            return Some(Problem::new(
                "the client that asked for the update went away (was `pyreload apply` interrupted?); the update was cancelled before the commit and nothing was changed",
            ));
        }
        None
    }
}

impl Drop for Progress<'_> {
    fn drop(&mut self) {
        self.state.clear_in_progress();
    }
}
