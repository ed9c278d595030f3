//! One member's side of a tree-wide update: the [`Session`] steps, driven
//! by the coordinator's messages instead of by this process alone.
//!
//! A member resolves the spec against its own `sys.modules`. A module it
//! has not loaded is not its part of the update (gunicorn's master without
//! `--preload` loads none of the app), and a member that loads none of the
//! spec's modules answers with no modules and takes no further part. The
//! coordinator refuses an update whose module no member loads.
//!
//! Once every member is staged, each commits as a program alone does, at
//! its own safe point and with its own pause, and then waits to hear
//! whether its commit stands (`Keep`) or must be rolled back because
//! another member's failed (`Revert`).
//!
//! Between messages the member waits without the GIL. A staged member
//! waits for the commit at most until its safe-point deadline; a
//! coordinator silent longer is taken for gone, and the decision file says
//! what to do (see [`decide`]): it commits only if the coordinator had
//! decided to.

use std::path::Path;
use std::time::{Duration, Instant};

use pyo3::prelude::*;

use super::progress::{ClientGone, Progress};
use super::rollback::CommittedStack;
use super::session::Session;
use super::Stop;
use crate::diagnostic::Problem;
use crate::process::bell::{self, Ear};
use crate::process::member_wire::{
    monotonic_ns, CommitInstants, Invitation, Link, MemberReply, Mode, RollbackOrder, Step,
};
use crate::process::sched::{BoostWatch, GilBoost, Raised};
use crate::process::state::{GateError, ProcessState};
use crate::report::{Outcome, Report};
use crate::spec::{self, SpecSource, TreeCommit};

/// How long after its safe-point deadline a staged member still waits for
/// the coordinator's commit: the coordinator's own wait is bounded by the
/// same deadline.
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
    let Some(_gate) = enter(state, link) else { return };
    if let Mode::Rollback(order) = &invitation.mode {
        return serve_rollback(state, order, &invitation.decision, link);
    }
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
    let started = Instant::now();
    let mut report = super::report_for(state, &spec);
    let notify = link.notifier();
    let progress = Progress::begin(state, &report.update, Some(coordinator_gone))
        .telling(Box::new(move |why| notify(&MemberReply::Waiting { why: why.to_vec() })));
    Python::attach(|py| {
        let loaded = |name: &str| module_loaded(py, name);
        restrict(&mut spec, &loaded);
        let mut modules: Vec<String> = spec.reload.iter().map(|r| r.module.get_ref().clone()).collect();
        if invitation.born_late && state.version().as_deref() == Some(spec.update.to.get_ref().as_str()) {
            modules.clear();
        }
        if modules.is_empty() {
            // No part in the update, but a version like the tree's: the
            // coordinator's last word says whether the tree moved on.
            report.outcome = Outcome::Checked;
            let lasts = Duration::from_millis(spec.safe_point.timeout_ms() + spec.safe_point.commit_timeout_ms())
                + STAGED_GRACE * 2
                + invitation.hold;
            follow_the_tree(py, state, link, lasts, Some(spec.update.to.get_ref().clone()));
            return;
        }
        if invitation.mode == Mode::Check {
            report.outcome = Outcome::Checked;
            match Session::prepare(py, state, &source, &spec, &mut report) {
                Ok(session) => session.check_now(&mut report),
                Err(problem) => report.problem = Some(problem),
            }
            let _ = link.send(&MemberReply::Checked {
                modules,
                report: Box::new(report.clone()),
            });
            return;
        }
        // A child invited after its parent committed commits on its own:
        // the others have let go already.
        let commit = if invitation.born_late {
            TreeCommit::Each
        } else {
            spec.tree.commit()
        };
        converse(
            py,
            state,
            &progress,
            (&source, &spec, commit),
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

/// How long a member waits for its update gate before it says another
/// update is in progress: the previous update's conversation may still be
/// finishing when the next begins (measured: a worker of 8 under 16
/// clients refused the next `apply`, issued 50 ms after the last returned).
const GATE_PATIENCE: Duration = Duration::from_secs(2);

/// Takes this process's update gate for the conversation, or says why not.
fn enter<'s>(
    state: &'s ProcessState,
    link: &mut dyn Link,
) -> Option<std::sync::MutexGuard<'s, crate::process::state::Lifecycle>> {
    match state.begin_update_within(GATE_PATIENCE) {
        Ok(gate) => Some(gate),
        Err(GateError::Exiting) => {
            let _ = link.send(&MemberReply::Exiting);
            None
        }
        Err(GateError::Busy) => {
            let problem = Problem::new(format!(
                "another update is in progress in member pid {} (still after {} s); nothing was changed",
                state.pid,
                GATE_PATIENCE.as_secs()
            ));
            let _ = link.send(&MemberReply::Error { problem });
            None
        }
    }
}

/// A member with no part in the tree's update or rollback: answers with
/// no modules, and takes `version` if the coordinator's last word says the
/// tree moved on.
fn follow_the_tree(
    py: Python<'_>,
    state: &ProcessState,
    link: &mut dyn Link,
    lasts: Duration,
    version: Option<String>,
) {
    let sent = link.send(&MemberReply::Prepared {
        modules: Vec::new(),
        version: state.version(),
    });
    if sent.is_ok() && matches!(py.detach(|| link.recv(lasts)), Ok(Step::Keep)) {
        state.set_version(version);
    }
}

/// This member's part of a tree-wide rollback: the same rounds as an
/// update. Prepared if it can undo the update (it took part and kept its
/// journal), staged at once, and at the commit it rolls back as
/// `pyreload rollback` does, at its own safe point. The rollback records
/// itself in the history.
fn serve_rollback(state: &ProcessState, order: &RollbackOrder, decision: &Path, link: &mut dyn Link) {
    let timeout = Duration::from_millis(order.timeout_ms);
    let lasts = timeout * 2 + STAGED_GRACE * 2;
    let mut report = Report::begin(
        format!("{}{}", crate::process::state::ROLLBACK_PREFIX, order.update),
        state.name.clone(),
        state.pid,
        state.version(),
        order.to.clone().unwrap_or_else(|| "(none)".into()),
    );
    let refuse = |link: &mut dyn Link, report: &mut Report, problem: Problem| {
        report.problem = Some(problem);
        let _ = link.send(&MemberReply::Refused {
            report: Box::new(report.clone()),
        });
    };
    let modules: Vec<String> = Python::attach(|py| {
        let loaded: Vec<String> = order.modules.iter().filter(|m| module_loaded(py, m)).cloned().collect();
        if loaded.is_empty() {
            follow_the_tree(py, state, link, lasts, order.to.clone());
        }
        loaded
    });
    if modules.is_empty() {
        return;
    }
    match state.with_last_committed(|c| (c.name.clone(), c.blocked.clone())) {
        Some((name, None)) if name == order.update => {}
        Some((name, Some(why))) if name == order.update => {
            let problem = Problem::new(format!("cannot roll back `{name}` in member pid {}: {why}", state.pid));
            return refuse(link, &mut report, problem);
        }
        _ => {
            let problem = Problem::new(format!(
                "member pid {} loads {} but keeps no record of `{}` to undo: it started after the update, on the \
                 new version (a worker forked since, importing the files on disk); nothing was changed",
                state.pid,
                modules.join(", "),
                order.update
            ))
            .with_help(
                "put the old files back and apply the reverse spec, which reaches every member; or restart the \
                 workers born since the update, then roll back",
            );
            return refuse(link, &mut report, problem);
        }
    }
    if order.dry_run {
        report.outcome = Outcome::Checked;
        let _ = link.send(&MemberReply::Checked {
            modules,
            report: Box::new(report),
        });
        return;
    }
    let ear = match listen(state, decision, bell::COMMIT) {
        Ok(ear) => ear,
        Err(problem) => return refuse(link, &mut report, problem),
    };
    let prepared = MemberReply::Prepared {
        modules,
        version: state.version(),
    };
    if link.send(&prepared).is_err() || !matches!(link.recv(lasts), Ok(Step::Continue)) {
        return;
    }
    if link.send(&MemberReply::Staged).is_err() {
        return;
    }
    match link.recv_or_ring(lasts, &ear) {
        Ok(None | Some(Step::Commit)) => {}
        Ok(Some(_)) => return,
        Err(_) if decide(decision, Decision::Abort) != Decision::Commit => return,
        Err(_) => {}
    }
    let woke_ns = Some(monotonic_ns());
    let undone = super::rollback::rollback_in_update(state, false, timeout, None, false);
    let at = CommitInstants {
        woke_ns,
        gil_ns: None,
        released_ns: monotonic_ns(),
    };
    let reply = match undone {
        Ok(r) if r.outcome == Outcome::Committed => MemberReply::Released {
            report: Box::new(r),
            at,
            forked: false,
        },
        Ok(r) => MemberReply::Refused { report: Box::new(r) },
        Err(problem) => {
            report.problem = Some(problem);
            MemberReply::Refused {
                report: Box::new(report),
            }
        }
    };
    if link.send(&reply).is_ok() {
        // Keep (or Revert, which a rollback cannot honour: it is reported).
        let _ = link.recv(lasts);
    }
}

#[allow(clippy::too_many_arguments)]
fn converse(
    py: Python<'_>,
    state: &ProcessState,
    progress: &Progress<'_>,
    (source, spec, commit): (&SpecSource, &spec::Spec, TreeCommit),
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
    let forks_at_invitation = crate::process::tree::forks();
    let mut session = match Session::prepare(py, state, source, spec, report) {
        Ok(session) => session,
        Err(problem) => return refuse(link, report, problem),
    };
    let ear = match listen(state, decision, bell::COMMIT) {
        Ok(ear) => ear,
        Err(problem) => return refuse(link, report, problem),
    };
    let release_ear = match commit {
        TreeCommit::Each => None,
        TreeCommit::Together => match listen(state, decision, bell::RELEASE) {
            Ok(ear) => Some(ear),
            Err(problem) => return refuse(link, report, problem),
        },
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
    let held = STAGED_HOLD.with(|h| h.get());
    // Not while a prepared update is held (up to its lease): the program
    // would run with the short interval all that time.
    let handoff = if held.is_zero() {
        super::world::QuickHandoff::begin(py).ok()
    } else {
        None
    };
    // The bell's priority before saying "staged": the coordinator rings
    // once the last member has said it, and a member preempted between
    // its word and its wait, as an ordinary thread, would wait for a core
    // behind the program (measured: the last member woke 2-5 ms after the
    // others under 16 clients on 2 cores, the skew of the whole tree).
    let bell = crate::process::sched::BellPriority::begin(spec.tree.realtime());
    report.bell = Some(bell.turn());
    // Listed before the watch starts, which is not the program's.
    let boost = bell.may_boost().then(GilBoost::list);
    let watch = boost.as_ref().and_then(|_| BoostWatch::start().ok());
    let boost = boost.filter(|_| watch.is_some());
    if link.send(&MemberReply::Staged).is_err() {
        return report.cancel(coordinator_gone());
    }
    let wait_for = session.deadline().saturating_duration_since(Instant::now()) + STAGED_GRACE + held;
    let (step, raised, woke_ns) = py.detach(|| {
        let step = link.recv_or_ring(wait_for, &ear);
        let woke_ns = monotonic_ns();
        // The commit: the program's threads hurry to hand over the GIL
        // until this thread has it (back from `detach`).
        let raised = boost
            .as_ref()
            .zip(watch.as_ref())
            .filter(|_| matches!(step, Ok(None | Some(Step::Commit))))
            .map(|(boost, watch)| boost.raise(watch));
        (step, raised, woke_ns)
    });
    let mut at = CommitInstants {
        woke_ns: Some(woke_ns),
        gil_ns: Some(monotonic_ns()),
        released_ns: 0,
    };
    if raised.is_some_and(Raised::end) {
        report.gil_boost_capped += 1;
    }
    drop(handoff);
    match step {
        Ok(None | Some(Step::Commit)) => {}
        Ok(Some(Step::Abort)) => return aborted(link, report, Problem::new("another member of the tree refused")),
        Ok(Some(other)) => return unexpected(link, other),
        // Silent for longer than it could take: whatever the coordinator
        // decided is in the decision file, and if it decided nothing,
        // this abort is the decision.
        Err(_) => {
            if decide(decision, Decision::Abort) != Decision::Commit {
                return report.cancel(coordinator_gone());
            }
        }
    }
    // The commit, as a program alone makes it: its own safe point, its own
    // pause. A refusal now has the members that committed rolled back.
    session.rearm_timeout();
    session.boost_alone = watch;
    if state.exit_requested() {
        return aborted(link, report, Problem::new("the member began to exit before its commit"));
    }
    if let Some(release_ear) = &release_ear {
        let bells = Together {
            decision,
            release_ear,
            hold: spec.tree.hold(),
            bell,
        };
        return commit_together(
            py,
            state,
            progress,
            &mut session,
            bells,
            link,
            report,
            (at, forks_at_invitation),
        );
    }
    // The decision is "commit" now: a coordinator that hangs up meanwhile
    // changes nothing.
    let waiting = |session: &Session<'_>, blockers: &super::safepoint::Blockers| {
        // A worker retired meanwhile (its main thread finishing up) will
        // not reach the safe point, and need not: it exits.
        if state.exit_requested() {
            return Err(Stop::Abandoned(Problem::new(
                "the member began to exit before its commit",
            )));
        }
        let why = session_blockers(session, blockers);
        // A note: a coordinator that cannot hear it changes nothing.
        let _ = link.send(&MemberReply::Waiting { why });
        Ok(())
    };
    let committed = session.commit(state, progress, report, waiting);
    at.released_ns = monotonic_ns();
    drop(bell);
    let done = match committed {
        Ok(Some(done)) => done,
        // Rolled back here already: nobody saw the new version.
        Ok(None) => {
            let _ = link.send(&MemberReply::RolledBack {
                report: Box::new(report.clone()),
            });
            return;
        }
        Err(Stop::Refused(problem)) => return refuse(link, report, problem),
        Err(Stop::Abandoned(problem)) => return aborted(link, report, problem),
    };
    released(
        py,
        state,
        progress,
        &session,
        done,
        (at, forks_at_invitation),
        link,
        report,
    );
}

/// A member let go on the new version: finishes, says so, and waits for
/// the coordinator's last word (`Revert` if another member failed).
#[allow(clippy::too_many_arguments)]
fn released(
    py: Python<'_>,
    state: &ProcessState,
    progress: &Progress<'_>,
    session: &Session<'_>,
    done: super::Done,
    (at, forks_at_invitation): (CommitInstants, u64),
    link: &mut dyn Link,
    report: &mut Report,
) {
    session.finish(state, progress, done, report);
    // Children forked before the commit run the old version; those
    // forked after it are born new and need no part.
    let forked = session.forks_at_commit != forks_at_invitation;
    let sent = link.send(&MemberReply::Released {
        report: Box::new(report.clone()),
        at,
        forked,
    });
    // The others commit within the same bounds as this one did.
    let lease = session.plan.timeout + session.plan.commit_timeout + STAGED_GRACE;
    if sent.is_err() || !py.detach(|| told_to_revert(link, lease)) {
        // Kept: every member committed, or the coordinator is gone and
        // cannot tell otherwise.
        return;
    }
    revert(py, state, link, report, session.plan.timeout);
}

/// How long past `hold_ms` a member stopped with its merge waits for the
/// coordinator's word before it decides, for the whole tree, to abort.
/// The coordinator decides by `hold_ms` after it rang.
const HOLD_GRACE: Duration = Duration::from_millis(50);

/// What a member committing `together` waits on.
struct Together<'a> {
    decision: &'a Path,
    release_ear: &'a Ear,
    hold: Duration,
    /// Held from the commit's ring to the release.
    bell: crate::process::sched::BellPriority,
}

/// `[tree] commit = "together"`, from the commit's ring: stops at the safe
/// point and merges, says so, and waits with the world still stopped for
/// the tree's word (the release bell, and the release decision). "commit"
/// lets the world go on the new version; "abort", or no word within
/// `hold_ms`, undoes the merge before any other thread ran it.
#[allow(clippy::too_many_arguments)]
fn commit_together(
    py: Python<'_>,
    state: &ProcessState,
    progress: &Progress<'_>,
    session: &mut Session<'_>,
    bells: Together<'_>,
    link: &mut dyn Link,
    report: &mut Report,
    (mut at, forks_at_invitation): (CommitInstants, u64),
) {
    let Together {
        decision,
        release_ear,
        hold,
        bell,
    } = bells;
    let give_up_at = Instant::now() + hold + HOLD_GRACE;
    let release = release_decision(decision);
    let waiting = |session: &Session<'_>, blockers: &super::safepoint::Blockers| {
        if state.exit_requested() {
            return Err(Stop::Abandoned(Problem::new(
                "the member began to exit before its commit",
            )));
        }
        // The others are stopped, waiting: past the hold, or once the tree
        // has decided (to abort: it cannot commit without this member),
        // stop trying.
        if release.exists() || Instant::now() >= give_up_at {
            return Err(Stop::Abandoned(Problem::new(format!(
                "its safe point did not hold within the tree's hold_ms ({} ms): {}",
                hold.as_millis(),
                session_blockers(session, blockers).join("; ")
            ))));
        }
        let _ = link.send(&MemberReply::Waiting {
            why: session_blockers(session, blockers),
        });
        Ok(())
    };
    let held = match session.stop_and_merge(progress, report, waiting) {
        Ok(Some(held)) => held,
        Ok(None) => {
            let _ = link.send(&MemberReply::RolledBack {
                report: Box::new(report.clone()),
            });
            return;
        }
        Err(Stop::Refused(problem) | Stop::Abandoned(problem)) => return aborted(link, report, problem),
    };
    // The world stays stopped, and this thread keeps the GIL while it
    // waits: nothing in this process may run the new version yet. The
    // coordinator never enters Python, so it cannot wait on it.
    //
    // The release bell rings only once the tree decided to commit, so
    // hearing it needs no look at the decision (a file, 0.1 ms on a busy
    // machine, which the members would spend one after another); an abort
    // comes as a message to each. Silence, or a coordinator gone, leaves
    // it to the release decision, which this member makes "abort" unless
    // the coordinator made it first.
    let word = if release.exists() {
        decide(&release, Decision::Abort)
    } else {
        let _ = link.send(&MemberReply::Merged);
        let left = give_up_at.saturating_duration_since(Instant::now());
        match link.recv_or_ring(left, release_ear) {
            Ok(None | Some(Step::Commit)) => Decision::Commit,
            Ok(Some(Step::Abort)) => Decision::Abort,
            Ok(Some(_)) | Err(_) => decide(&release, Decision::Abort),
        }
    };
    match word {
        Decision::Commit => {
            let done = session.let_go(state, held, report);
            at.released_ns = monotonic_ns();
            drop(bell);
            released(
                py,
                state,
                progress,
                session,
                done,
                (at, forks_at_invitation),
                link,
                report,
            );
        }
        Decision::Abort => {
            session.undo(
                held,
                report,
                Problem::new(
                    "the tree did not stop and merge together (another member refused, or did not within hold_ms); this member undid its merge before running the new version",
                ),
            );
            let _ = link.send(&MemberReply::Undone {
                report: Box::new(report.clone()),
            });
        }
    }
}

/// Opens one of the update's bells (`step`), which the coordinator made
/// before it invited anyone.
fn listen(state: &ProcessState, decision: &Path, step: &str) -> Result<Ear, Problem> {
    Ear::open(&bell::path_for(decision, step)).map_err(|e| {
        Problem::new(format!(
            "could not open the tree's bell in member pid {}: {e}",
            state.pid
        ))
    })
}

/// Whether the coordinator's last word after this member's commit is
/// `Revert` (`Keep`, silence and a hang-up all keep it). A `Commit` sent
/// before the bell was heard is passed over.
fn told_to_revert(link: &mut dyn Link, lease: Duration) -> bool {
    let until = Instant::now() + lease;
    loop {
        match link.recv(until.saturating_duration_since(Instant::now())) {
            Ok(Step::Commit) => continue,
            Ok(step) => return step == Step::Revert,
            Err(_) => return false,
        }
    }
}

/// Rolls this member's commit back because another member failed its
/// own, as `pyreload rollback` would (at its own safe point), and says so.
fn revert(py: Python<'_>, state: &ProcessState, link: &mut dyn Link, report: &mut Report, timeout: Duration) {
    state.record_attempt(report);
    let undone = py.detach(|| super::rollback::rollback_in_update(state, false, timeout, None, true));
    let (rollback_ms, problem) = match undone {
        Ok(r) if r.outcome == Outcome::Committed => (r.timings.pause_ms, None),
        Ok(r) => (
            r.timings.pause_ms,
            Some(
                r.problem
                    .unwrap_or_else(|| Problem::new("the rollback did not complete")),
            ),
        ),
        Err(problem) => (0.0, Some(problem)),
    };
    report.timings.rollback_ms = rollback_ms;
    match problem {
        None => {
            report.outcome = Outcome::RolledBack;
            report.problem = Some(Problem::new(
                "another member of the tree failed its commit; this member's commit was rolled back",
            ));
        }
        Some(problem) => {
            report.problem = Some(Problem::new(format!(
                "another member of the tree failed its commit, and rolling this member back failed too: {}",
                problem.message
            )));
        }
    }
    let _ = link.send(&MemberReply::Undone {
        report: Box::new(report.clone()),
    });
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

/// What the tree decided: whether its staged members commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Commit,
    Abort,
}

/// Where a tree committing `together` records whether its merged members
/// let go on the new version or undo.
pub fn release_decision(decision: &Path) -> std::path::PathBuf {
    let mut name = decision.as_os_str().to_owned();
    name.push("-release");
    name.into()
}

/// Records `want` as the tree's decision unless one is recorded already,
/// and returns the decision that holds. The first to create the file
/// decides, whoever it is: the coordinator deciding to commit, or a member
/// whose coordinator went silent deciding to abort. So either every
/// member commits or none does.
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
