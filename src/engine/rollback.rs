//! `pyreload rollback`: undo the last committed update.
//!
//! After a commit the host keeps the update's journal, without its data
//! entries, and the spec's `reverse` transformers. Rolling back waits for
//! its own safe point (every function whose code it restores must be
//! inactive). In a stopped world it then converts the data as it is now
//! with the reverse transformers, journaled so that a failing reverse
//! changes nothing, and replays the code journal backwards. Updates roll
//! back newest first, one per call.

use std::any::Any;
use std::time::{Duration, Instant};

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PySet};

use super::journal::Journal;
use super::progress::{ClientGone, Progress};
use super::support::Support;
use super::watchdog::Deadline;
use super::world::StoppedWorld;
use super::{safepoint, transform};
use crate::diagnostic::Problem;
use crate::plan::{Plan, TransformPlan};
use crate::process::state::{CommittedUpdate, GateError, ProcessState};
use crate::process::wire::{Phase, RollbackInfo};
use crate::report::{Outcome, Report, SafePointSummary};

/// What the host keeps of a committed update, to be able to undo it.
pub struct Committed {
    pub name: String,
    pub from: Option<String>,
    pub to: String,
    /// The code changes, as the journal recorded them.
    pub journal: Journal,
    /// The spec's reverse transforms, in the order to run them.
    pub reverses: Vec<TransformPlan>,
    /// Why this update cannot be rolled back, if it cannot.
    pub blocked: Option<String>,
    /// The running sources the update replaced, to put back.
    pub previous_sources: Vec<(String, Option<crate::process::state::UpdateSource>)>,
    /// The spec's `commit_timeout_ms`, which bounds the reverse transformers.
    pub commit_timeout: Duration,
    /// Copies in other modules of the globals the update transformed:
    /// (importer's globals, alias, module's globals, name). A rollback
    /// points those that still follow at the reversed value.
    pub followers: Vec<(Py<PyDict>, String, Py<PyDict>, String)>,
}

impl Committed {
    /// Keeps what `pyreload rollback` needs from a plan that committed.
    pub fn from_plan(
        name: String,
        from: Option<String>,
        plan: &Plan,
        journal: Journal,
        previous_sources: Vec<(String, Option<crate::process::state::UpdateSource>)>,
    ) -> Committed {
        let missing: Vec<&str> = plan
            .transforms
            .iter()
            .filter(|t| t.reverse.is_none())
            .map(|t| t.path.as_str())
            .collect();
        let blocked = (!missing.is_empty()).then(|| {
            format!(
                "it transformed {} and its spec declares no `reverse` for {}",
                missing.iter().map(|m| format!("`{m}`")).collect::<Vec<_>>().join(", "),
                if missing.len() == 1 { "it" } else { "them" }
            )
        });
        let reverses = plan
            .transforms
            .iter()
            .rev()
            .filter_map(|t| {
                Some(TransformPlan {
                    target: t.target.clone(),
                    path: t.path.clone(),
                    function: Some(t.reverse.clone()?),
                    defaults: Vec::new(),
                    mode: crate::spec::Mode::Eager,
                    reverse: None,
                    location: None,
                })
            })
            .collect();
        let followers = Python::attach(|py| {
            plan.copies
                .iter()
                .filter(|c| plan.modules[c.module].transformed.contains(&c.name))
                .map(|c| {
                    (
                        c.globals.clone_ref(py),
                        c.alias.clone(),
                        plan.modules[c.module].module.bind(py).dict().unbind(),
                        c.name.clone(),
                    )
                })
                .collect()
        });
        Committed {
            followers,
            name,
            from,
            to: plan.to.clone(),
            journal: journal.into_code_only(),
            reverses,
            blocked,
            previous_sources,
            commit_timeout: plan.commit_timeout,
        }
    }
}

impl CommittedUpdate for Committed {
    fn name(&self) -> &str {
        &self.name
    }

    fn info(&self) -> RollbackInfo {
        RollbackInfo {
            name: self.name.clone(),
            from: self.from.clone(),
            to: self.to.clone(),
            blocked: self.blocked.clone(),
        }
    }

    fn block(&mut self, why: String) {
        self.blocked = Some(why);
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    fn into_any(self: Box<Self>) -> Box<dyn Any> {
        self
    }
}

/// The process state's stack of committed updates, as the engine's own
/// [`Committed`] type (the state keeps them type-erased, see
/// [`CommittedUpdate`]). Every entry on it was pushed by the engine, so
/// the downcasts cannot fail.
pub trait CommittedStack {
    /// Keeps a committed update (call with the GIL held).
    fn push_committed(&self, committed: Committed);
    fn pop_committed(&self) -> Option<Committed>;
    fn with_last_committed<R>(&self, f: impl FnOnce(&Committed) -> R) -> Option<R>;
}

impl CommittedStack for ProcessState {
    fn push_committed(&self, committed: Committed) {
        self.push_committed_update(Box::new(committed));
    }

    fn pop_committed(&self) -> Option<Committed> {
        let any = self.pop_committed_update()?.into_any();
        Some(
            *any.downcast::<Committed>()
                .expect("the committed stack holds the engine's updates"),
        )
    }

    fn with_last_committed<R>(&self, f: impl FnOnce(&Committed) -> R) -> Option<R> {
        self.with_last_committed_update(|c| {
            f(c.as_any()
                .downcast_ref::<Committed>()
                .expect("the committed stack holds the engine's updates"))
        })
    }
}

/// Undoes the last committed update (or, with `dry_run`, says whether it
/// could).
pub fn rollback(
    state: &ProcessState,
    dry_run: bool,
    timeout: Duration,
    client_gone: Option<ClientGone<'_>>,
) -> Result<Report, Problem> {
    let _gate = state.begin_update().map_err(|e| match e {
        GateError::Busy => Problem::new("an update is in progress in this program; nothing was rolled back")
            .with_help("wait for it to finish and try again"),
        GateError::Exiting => Problem::new("the program is exiting; nothing was rolled back"),
    })?;
    rollback_in_update(state, dry_run, timeout, client_gone, false)
}

/// [`rollback`], by a caller that holds the update gate already: a tree
/// member undoing its commit because another member's failed (then
/// `through_exit`: an exit that began meanwhile does not stop it).
pub fn rollback_in_update(
    state: &ProcessState,
    dry_run: bool,
    timeout: Duration,
    client_gone: Option<ClientGone<'_>>,
    through_exit: bool,
) -> Result<Report, Problem> {
    let started = Instant::now();
    let (name, to, blocked) = state
        .with_last_committed(|c| (c.name.clone(), c.from.clone(), c.blocked.clone()))
        .ok_or_else(|| Problem::new(state.nothing_to_roll_back()))?;
    if let Some(why) = blocked {
        return Err(Problem::new(format!("cannot roll back `{name}`: {why}; nothing was changed")).with_help(
            "add `reverse = \"module.function\"` to each [[transform]] of the spec; the reverse transformer turns the new data back into the old",
        ));
    }
    let mut report = Report::begin(
        format!("{}{name}", crate::process::state::ROLLBACK_PREFIX),
        state.name.clone(),
        state.pid,
        state.version(),
        to.clone().unwrap_or_else(|| "(none)".into()),
    );
    let mut progress = Progress::begin(state, &report.update, client_gone);
    if through_exit {
        progress = progress.through_exit();
    }
    Python::attach(|py| run(py, state, &progress, dry_run, timeout, &mut report));
    report.timings.total_ms = started.elapsed().as_secs_f64() * 1000.0;
    if !dry_run {
        state.record_attempt(&report);
    }
    drop(progress);
    Ok(report)
}

fn run(
    py: Python<'_>,
    state: &ProcessState,
    progress: &Progress<'_>,
    dry_run: bool,
    timeout: Duration,
    report: &mut Report,
) {
    let support = match Support::load(py) {
        Ok(s) => s,
        Err(e) => return report.problem = Some(Problem::new(format!("could not load pyreload's helpers: {e}"))),
    };
    let plan = match safe_point_plan(py, &support, state, timeout) {
        Ok(plan) => plan,
        Err(e) => return report.problem = Some(support.problem(py, "could not prepare the rollback", &e)),
    };
    report.safe_point = SafePointSummary {
        inactive: plan.inactive.clone(),
        ..SafePointSummary::default()
    };
    if dry_run {
        report.outcome = Outcome::Checked;
        return;
    }
    progress.enter(Phase::Wait);
    let mut pacer = safepoint::Pacer::new(Instant::now() + plan.timeout);
    let commit_timeout = state.with_last_committed(|c| c.commit_timeout).unwrap_or_default();
    loop {
        if let Some(problem) = progress.abandoned() {
            return report.cancel(problem);
        }
        progress.enter(Phase::Commit);
        let stopped_at = Instant::now();
        let world = match StoppedWorld::stop(py) {
            Ok(world) => world,
            Err(e) => return report.problem = Some(support.problem(py, "could not stop the program's threads", &e)),
        };
        report.safe_point_checks += 1;
        report.stopped_threads = world.threads;
        let blockers = match safepoint::check(py, &support, &plan, &[]) {
            Ok(b) => b,
            Err(problem) => return report.problem = Some(problem),
        };
        if blockers.clear() {
            undo(py, &support, state, commit_timeout, report);
            drop(world);
            report.timings.pause_ms = stopped_at.elapsed().as_secs_f64() * 1000.0;
            return;
        }
        drop(world);
        progress.enter(Phase::Wait);
        if !pacer.next(py) {
            return report.problem = Some(safepoint::timed_out(&plan, &blockers));
        }
    }
}

/// Inside the stopped world: reverse the data, then the code. The reverse
/// transformers are the user's code, and run under the update's
/// `commit_timeout_ms` (see [`super::watchdog`]).
fn undo(py: Python<'_>, support: &Support<'_>, state: &ProcessState, commit_timeout: Duration, report: &mut Report) {
    let t = Instant::now();
    // The copies of transformed globals that follow them now follow the
    // reversed value, not the object they held before the update.
    let following: Vec<bool> = state
        .with_last_committed(|c| {
            c.followers
                .iter()
                .map(|(importer, alias, module, name)| {
                    let (held, value) = (importer.bind(py).get_item(alias), module.bind(py).get_item(name));
                    matches!((held, value), (Ok(Some(h)), Ok(Some(v))) if h.is(&v))
                })
                .collect()
        })
        .unwrap_or_default();
    let mut data_journal = Journal::default();
    let deadline = Deadline::arm(py, Instant::now() + commit_timeout);
    let reversed: Result<Vec<_>, Problem> = state
        .with_last_committed(|c| {
            c.reverses
                .iter()
                .map(|r| transform::run_one(py, support, r, &mut data_journal))
                .collect()
        })
        .unwrap_or_else(|| Ok(Vec::new()));
    let limit = super::commit_limit(commit_timeout);
    let reversed = reversed.map_err(|problem| super::interrupted(problem, &deadline, &limit));
    drop(deadline);
    match reversed {
        Ok(reports) => report.transforms = reports,
        Err(problem) => {
            for e in data_journal.rollback(py, support) {
                report.warnings.push(format!("could not restore a value: {e}"));
            }
            report.problem = Some(Problem {
                message: format!(
                    "{}; the rollback was abandoned and the program still runs version {}",
                    problem.message,
                    report.from.as_deref().unwrap_or("(none)")
                ),
                ..problem
            });
            return;
        }
    }
    let Some(committed) = state.pop_committed() else { return };
    for e in committed.journal.rollback(py, support) {
        report.warnings.push(format!("could not restore a value: {e}"));
    }
    for ((importer, alias, module, name), follows) in committed.followers.iter().zip(following) {
        if let (true, Ok(Some(value))) = (follows, module.bind(py).get_item(name)) {
            if let Err(e) = importer.bind(py).set_item(alias, value) {
                report
                    .warnings
                    .push(format!("could not re-point the copy `{alias}`: {e}"));
            }
        }
    }
    report.timings.commit_ms = t.elapsed().as_secs_f64() * 1000.0;
    report.outcome = Outcome::Committed;
    state.swap_sources(committed.previous_sources);
    state.set_version(committed.from);
}

/// The safe point of a rollback: every function whose code it restores must
/// be inactive.
fn safe_point_plan(py: Python<'_>, support: &Support<'_>, state: &ProcessState, timeout: Duration) -> PyResult<Plan> {
    let builtins = py.import("builtins")?;
    let ids = PySet::empty(py)?;
    let generators = PyList::empty(py);
    let mut inactive = Vec::new();
    let codes = state
        .with_last_committed(|c| c.journal.patched_codes(py))
        .unwrap_or_default();
    for (name, code, old) in codes {
        if support.same_code(&code, &old)? {
            continue;
        }
        ids.add(builtins.getattr("id")?.call1((&code,))?)?;
        if support.is_generator_code(&code)? {
            generators.append(&code)?;
        }
        inactive.push(name);
    }
    inactive.sort();
    inactive.dedup();
    Ok(Plan {
        to: String::new(),
        modules: Vec::new(),
        inactive,
        inactive_code_ids: ids.unbind(),
        generator_codes: generators.unbind(),
        condition: None,
        update_point: None,
        after: None,
        transforms: Vec::new(),
        timeout,
        commit_timeout: Duration::ZERO,
        // Rollback's own loop lets the world go at a blocked look.
        run_alone: Duration::ZERO,
        imports: Default::default(),
        copies: Vec::new(),
        stars: Vec::new(),
    })
}
