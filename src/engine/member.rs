//! One member's side of a tree-wide update: the [`Session`] steps, driven
//! by the coordinator's messages instead of by this process alone.
//!
//! A member resolves the spec against its own `sys.modules`. A module it
//! has not loaded is not its part of the update (gunicorn's master without
//! `--preload` loads none of the app), and a member that loads none of the
//! spec's modules answers with no modules and takes no further part. The
//! coordinator refuses an update whose module no member loads.
//!
//! Between messages the member waits without the GIL. Once frozen, it
//! waits at most [`FROZEN_LEASE`] for the next one; a coordinator that is
//! silent longer is taken for gone, and the decision file says what to do
//! (see [`decide`]): a merge is kept only if the coordinator had decided
//! to commit.

use std::path::Path;
use std::time::{Duration, Instant};

use pyo3::prelude::*;

use super::progress::{ClientGone, Progress};
use super::session::{Freeze, Session};
use super::Stop;
use crate::diagnostic::Problem;
use crate::process::member_wire::{monotonic_ns, Invitation, Link, MemberReply, Step};
use crate::process::state::{GateError, ProcessState};
use crate::report::{Outcome, Report};
use crate::spec::{self, SpecSource};

/// How long a frozen member waits for its coordinator's next message.
/// Far below the supervisors' own limits (gunicorn kills a worker silent
/// for `--timeout`, 30 s by default), far above a commit's round trips.
pub const FROZEN_LEASE: Duration = Duration::from_secs(2);

/// How long after its safe-point deadline a staged member still waits for
/// the coordinator to freeze it: the coordinator's own wait is bounded by
/// the same deadline.
const STAGED_GRACE: Duration = Duration::from_secs(5);

std::thread_local! {
    /// How much longer than usual this conversation's coordinator may
    /// keep the member staged: the lease of a prepared update (see
    /// `Invitation::hold`), zero for `apply`.
    static STAGED_HOLD: std::cell::Cell<Duration> = const { std::cell::Cell::new(Duration::ZERO) };
}

/// Serves one member conversation to its end. `coordinator_gone` tells,
/// while the member waits for its safe point, whether the coordinator has
/// hung up.
pub fn serve(state: &ProcessState, invitation: Invitation, link: &mut dyn Link, coordinator_gone: ClientGone<'_>) {
    STAGED_HOLD.with(|h| h.set(invitation.hold));
    let source = SpecSource {
        path: invitation.spec_path.clone(),
        text: invitation.spec_text.clone(),
    };
    let mut spec = match spec::parse(&source) {
        Ok(spec) => spec,
        Err(mut problems) => {
            let _ = link.send(&MemberReply::Error {
                problem: problems.remove(0),
            });
            return;
        }
    };
    let _gate = match state.begin_update() {
        Ok(gate) => gate,
        Err(e) => {
            let problem = match e {
                GateError::Busy => Problem::new(format!(
                    "another update is in progress in member pid {}; nothing was changed",
                    state.pid
                )),
                GateError::Exiting => {
                    let _ = link.send(&MemberReply::Exiting);
                    return;
                }
            };
            let _ = link.send(&MemberReply::Error { problem });
            return;
        }
    };
    let started = Instant::now();
    let mut report = super::report_for(state, &spec);
    let notify = link.notifier();
    let progress = Progress::begin(state, &report.update, Some(coordinator_gone))
        .telling(Box::new(move |why| notify(&MemberReply::Waiting { why: why.to_vec() })));
    Python::attach(|py| {
        let loaded = |name: &str| module_loaded(py, name);
        restrict(&mut spec, &loaded);
        let modules: Vec<String> = spec.reload.iter().map(|r| r.module.get_ref().clone()).collect();
        if modules.is_empty() {
            // No part in the update, but a version like the tree's: the
            // coordinator's last word says whether the tree moved on.
            report.outcome = Outcome::Checked;
            let sent = link.send(&MemberReply::Prepared {
                modules,
                version: state.version(),
            });
            let lasts = Duration::from_millis(spec.safe_point.timeout_ms() + spec.safe_point.commit_timeout_ms())
                + STAGED_GRACE * 2
                + invitation.hold;
            if sent.is_ok() && matches!(py.detach(|| link.recv(lasts)), Ok(Step::Release)) {
                state.set_version(Some(spec.update.to.get_ref().clone()));
            }
            return;
        }
        converse(
            py,
            state,
            &progress,
            &source,
            &spec,
            &invitation.decision,
            link,
            &mut report,
            modules,
        );
    });
    report.timings.total_ms = started.elapsed().as_secs_f64() * 1000.0;
    if report.outcome != Outcome::Checked {
        state.record_attempt(&report);
    }
    drop(progress);
}

#[allow(clippy::too_many_arguments)]
fn converse(
    py: Python<'_>,
    state: &ProcessState,
    progress: &Progress<'_>,
    source: &SpecSource,
    spec: &spec::Spec,
    decision: &Path,
    link: &mut dyn Link,
    report: &mut Report,
    modules: Vec<String>,
) {
    let refuse = |link: &mut dyn Link, report: &mut Report, problem: Problem| {
        report.problem = Some(problem);
        let _ = link.send(&MemberReply::Refused {
            report: Box::new(report.clone()),
        });
    };
    let mut session = match Session::prepare(py, state, source, spec, report) {
        Ok(session) => session,
        Err(problem) => return refuse(link, report, problem),
    };
    if link
        .send(&MemberReply::Prepared {
            modules,
            version: state.version(),
        })
        .is_err()
    {
        return report.cancel(coordinator_gone());
    }
    let wait_for = session.plan.timeout + STAGED_GRACE;
    match py.detach(|| link.recv(wait_for)) {
        Ok(Step::Continue) => {}
        Ok(Step::Abort) => {
            return aborted(
                link,
                report,
                Problem::new("the tree's update was abandoned before the wait"),
            )
        }
        Ok(other) => return unexpected(link, other),
        Err(_) => return report.cancel(coordinator_gone()),
    }
    match session.wait(progress, report) {
        Ok(()) => {}
        Err(Stop::Refused(problem)) => return refuse(link, report, problem),
        Err(Stop::Abandoned(problem)) => return aborted(link, report, problem),
    }
    if let Err(problem) = session.stage(progress, report) {
        return refuse(link, report, problem);
    }
    if link.send(&MemberReply::Staged).is_err() {
        return report.cancel(coordinator_gone());
    }
    loop {
        let wait_for =
            session.deadline().saturating_duration_since(Instant::now()) + STAGED_GRACE + STAGED_HOLD.with(|h| h.get());
        match py.detach(|| link.recv(wait_for)) {
            Ok(Step::Freeze) => {}
            Ok(Step::Abort) => return aborted(link, report, Problem::new("another member of the tree refused")),
            Ok(other) => return unexpected(link, other),
            Err(_) => return report.cancel(coordinator_gone()),
        }
        let mut frozen = match session.freeze(progress, report) {
            Ok(Freeze::Frozen(frozen)) => frozen,
            Ok(Freeze::Blocked(blockers)) => {
                let why = session_blockers(&session, &blockers);
                if link.send(&MemberReply::Blocked { why }).is_err() {
                    return report.cancel(coordinator_gone());
                }
                continue;
            }
            Err(problem) => return refuse(link, report, problem),
        };
        if link.send(&MemberReply::Frozen).is_err() {
            session.release(frozen, report);
            return report.cancel(coordinator_gone());
        }
        match py.detach(|| link.recv(FROZEN_LEASE)) {
            Ok(Step::Commit) => {}
            Ok(Step::Thaw) => {
                session.release(frozen, report);
                if link.send(&MemberReply::Thawed).is_err() {
                    return report.cancel(coordinator_gone());
                }
                continue;
            }
            Ok(Step::Abort) => {
                session.release(frozen, report);
                return aborted(
                    link,
                    report,
                    Problem::new("the tree's update was abandoned while frozen"),
                );
            }
            Ok(other) => {
                session.release(frozen, report);
                return unexpected(link, other);
            }
            Err(_) => {
                session.release(frozen, report);
                return report.cancel(coordinator_gone());
            }
        }
        let Some(mut done) = session.merge(&mut frozen, report) else {
            // Rolled back here already: nobody saw the new version.
            session.release(frozen, report);
            let _ = link.send(&MemberReply::RolledBack {
                report: Box::new(report.clone()),
            });
            return;
        };
        // The other members may still be merging: each within the spec's
        // `commit_timeout_ms`, as this one was.
        let lease = session.plan.commit_timeout + FROZEN_LEASE;
        let step = if link.send(&MemberReply::Merged).is_ok() {
            py.detach(|| link.recv(lease)).ok()
        } else {
            None
        };
        let commit = match step {
            Some(Step::Release) => true,
            Some(Step::Undo) => false,
            // The coordinator is gone or confused: whatever it decided is
            // in the decision file; if it decided nothing, nothing commits.
            _ => decide(decision, Decision::Abort) == Decision::Commit,
        };
        if commit {
            session.publish(state, &mut done);
            session.release(frozen, report);
            let released_at_ns = monotonic_ns();
            session.finish(state, progress, done, report);
            let _ = link.send(&MemberReply::Released {
                report: Box::new(report.clone()),
                released_at_ns,
            });
        } else {
            session.undo(done, report);
            session.release(frozen, report);
            report.problem = Some(Problem::new(
                "another member of the tree failed; this member's merge was undone",
            ));
            let _ = link.send(&MemberReply::Undone {
                report: Box::new(report.clone()),
            });
        }
        return;
    }
}

fn session_blockers(session: &Session<'_>, blockers: &super::safepoint::Blockers) -> Vec<String> {
    super::describe_blockers_now(blockers, &session.plan)
}

fn aborted(link: &mut dyn Link, report: &mut Report, problem: Problem) {
    if crate::process::state::current().exit_requested() {
        report.cancel(problem);
        let _ = link.send(&MemberReply::Exiting);
        return;
    }
    report.cancel(problem);
    let _ = link.send(&MemberReply::Aborted {
        report: Box::new(report.clone()),
    });
}

fn unexpected(link: &mut dyn Link, step: Step) {
    let _ = link.send(&MemberReply::Error {
        problem: Problem::new(format!(
            "unexpected step `{step:?}` in a member conversation; nothing was changed"
        )),
    });
}

fn coordinator_gone() -> Problem {
    Problem::new("the tree's coordinator went away before the commit; nothing was changed")
}

/// Whether `name` is in this process's `sys.modules`.
fn module_loaded(py: Python<'_>, name: &str) -> bool {
    py.import("sys")
        .and_then(|sys| sys.getattr("modules"))
        .and_then(|m| m.contains(name))
        .unwrap_or(false)
}

/// Narrows `spec` to this member's part: the modules it has loaded (and
/// the spec's new modules, if it has any of the others), and the
/// safe-point names, transforms and expressions about them. A member left
/// with no module has no part at all.
pub fn restrict(spec: &mut spec::Spec, loaded: &dyn Fn(&str) -> bool) {
    let has_any = spec.reload.iter().any(|r| !r.new && loaded(r.module.get_ref()));
    let only_new = spec.reload.iter().all(|r| r.new);
    spec.reload.retain(|r| {
        if r.new {
            has_any || only_new
        } else {
            loaded(r.module.get_ref())
        }
    });
    if spec.reload.is_empty() {
        spec.safe_point.inactive.clear();
        spec.safe_point.allow_active.clear();
        spec.transform.clear();
        spec.safe_point.condition = None;
        spec.safe_point.update_point = None;
        spec.check.after = None;
        return;
    }
    let kept: Vec<String> = spec.reload.iter().map(|r| r.module.get_ref().clone()).collect();
    let about_kept =
        |path: &str| kept.iter().any(|m| path == m || path.starts_with(&format!("{m}."))) || prefixes(path).any(loaded);
    spec.safe_point.inactive.retain(|n| about_kept(n.get_ref()));
    spec.safe_point.allow_active.retain(|n| about_kept(n.get_ref()));
    spec.transform.retain(|t| about_kept(t.target().get_ref()));
}

/// `a.b.c` → `a.b`, `a`.
fn prefixes(path: &str) -> impl Iterator<Item = &str> {
    path.char_indices()
        .filter(|(_, c)| *c == '.')
        .map(|(i, _)| &path[..i])
        .rev()
}

/// What the tree decided about a merged update.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Commit,
    Abort,
}

/// Records `want` as the tree's decision unless one is recorded already,
/// and returns the decision that holds. The first to create the file
/// decides, whoever it is: the coordinator deciding to commit, or a member
/// whose coordinator went silent deciding to abort. So either every
/// member keeps its merge or none does.
pub fn decide(path: &Path, want: Decision) -> Decision {
    let word = match want {
        Decision::Commit => "commit\n",
        Decision::Abort => "abort\n",
    };
    // Written whole under a private name, then linked into place: `link`
    // fails if the name exists, so the file appears once, with its word.
    let private = path.with_extension(format!("{}.{}", std::process::id(), monotonic_ns()));
    let linked = std::fs::write(&private, word).and_then(|()| std::fs::hard_link(&private, path));
    let _ = std::fs::remove_file(&private);
    match linked {
        Ok(()) => want,
        Err(_) => match std::fs::read_to_string(path) {
            Ok(text) if text.starts_with("commit") => Decision::Commit,
            _ => Decision::Abort,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_decision_holds() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("decision-1");
        assert_eq!(decide(&path, Decision::Commit), Decision::Commit);
        assert_eq!(decide(&path, Decision::Abort), Decision::Commit);
        let other = dir.path().join("decision-2");
        assert_eq!(decide(&other, Decision::Abort), Decision::Abort);
        assert_eq!(decide(&other, Decision::Commit), Decision::Abort);
    }

    #[test]
    fn prefixes_are_the_enclosing_names() {
        assert_eq!(prefixes("a.b.c").collect::<Vec<_>>(), ["a.b", "a"]);
        assert_eq!(prefixes("a").count(), 0);
    }
}
