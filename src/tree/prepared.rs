//! `pyreload prepare` for a program with worker processes: the tree's
//! rounds up to the stage, then the tree held there, every member staged,
//! until `commit`, `abort` or the end of the lease.
//!
//! The coordinator runs in a thread of its own (`pyreload-prepared`) and
//! holds the staged tree at [`coordinator::apply_held`]'s hold point; the
//! id, the lease, the commands and the fates of past ids are the same as
//! for a single process ([`crate::engine::prepared`]). Each member waits
//! for its coordinator, staged, with the GIL released, and is told how much
//! longer than usual it may be kept there (the lease); a member whose
//! coordinator disappears gives up as it does for `apply`.
//!
//! | the hold ends by | the tree                                          |
//! |------------------|---------------------------------------------------|
//! | `commit ID`      | every member commits, as `apply` does             |
//! | `abort ID`       | every member aborts; nothing changed              |
//! | the lease        | the same, logged as expired                       |

use std::sync::mpsc::Sender;
use std::time::{Duration, Instant};

use super::coordinator::{self, Held};
use crate::diagnostic::Problem;
use crate::engine::prepared::{self as held, Command, Next, Prepared};
use crate::process::state::{unix_seconds, ProcessState};
use crate::report::{Outcome, Report};
use crate::spec::SpecSource;

/// Holds the spec prepared across the program's tree, in a thread of its
/// own; answers once every member has staged (or the tree refused).
pub fn prepare(
    state: &'static ProcessState,
    spec_path: &str,
    spec_text: &str,
    lease: Duration,
) -> Result<Prepared, Problem> {
    let source = SpecSource {
        path: spec_path.to_string(),
        text: spec_text.to_string(),
    };
    held::precheck(&source, lease)?;
    held::spawn_holder(move |ready| hold_tree(state, source, lease, ready))
}

fn hold_tree(
    state: &'static ProcessState,
    source: SpecSource,
    lease: Duration,
    ready: Sender<Result<Prepared, Problem>>,
) {
    let mut told = None;
    let mut held_for = Duration::ZERO;
    let result = {
        let mut hold = |mut so_far: Report| -> Held {
            let (info, rx) = held::register(state, &so_far.update, &source.path, lease);
            so_far.prepared_id = Some(info.id.clone());
            let _ = ready.send(Ok(Prepared::Held(info.clone(), Box::new(so_far))));
            let at = Instant::now();
            let next = held::next_command(state, &rx, at + lease);
            held_for = at.elapsed();
            let decision = match &next {
                Next::Told(Command::Commit(_)) => Held::Commit,
                Next::Told(Command::Abort(_)) => Held::Abort(Problem::new(held::ABORTED_WHY)),
                Next::Expired => Held::Abort(Problem::new(held::expired_why(lease))),
                Next::Exiting => Held::Abort(Problem::new(held::EXITING_WHY)),
            };
            told = Some((info, next));
            decision
        };
        coordinator::apply_held(state, &source.path, &source.text, lease, &mut hold)
    };
    let Some((info, next)) = told else {
        // Refused (or busy) before anything was held.
        let _ = ready.send(result.map(|report| Prepared::Refused(Box::new(report))));
        return;
    };
    let mut report = result.unwrap_or_else(|problem| {
        let mut report = Report::begin(
            info.update.clone(),
            state.name.clone(),
            state.pid,
            state.version(),
            String::new(),
        );
        report.problem = Some(problem);
        report
    });
    report.prepared_id = Some(info.id.clone());
    report.timings.total_ms = (report.timings.total_ms - held_for.as_secs_f64() * 1000.0).max(0.0);
    let (fate, reply) = match next {
        Next::Told(Command::Commit(reply)) => {
            if report.outcome == Outcome::Committed {
                // The coordinator hears the last release just before this.
                report.released_at = Some(unix_seconds(std::time::SystemTime::now()));
            }
            (held::committed_fate(&info, report.outcome), Some(reply))
        }
        Next::Told(Command::Abort(reply)) => {
            report.outcome = Outcome::Cancelled;
            (held::fate(&info, "aborted", held::ABORTED_WHY.into()), Some(reply))
        }
        Next::Expired => {
            report.outcome = Outcome::Cancelled;
            (held::fate(&info, "expired", held::expired_why(lease)), None)
        }
        Next::Exiting => {
            report.outcome = Outcome::Cancelled;
            (held::fate(&info, "cancelled", held::EXITING_WHY.into()), None)
        }
    };
    held::conclude(fate, &report, reply);
}
