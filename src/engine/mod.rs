//! The update engine: prepare → wait → stage → commit (merge, transform,
//! check), with rollback of the commit on any failure.
//!
//! | phase     | the program                                       | on failure  |
//! |-----------|---------------------------------------------------|-------------|
//! | prepare   | runs; nothing changed                             | refused     |
//! | wait      | runs; GIL released between checks                 | refused     |
//! | stage     | runs the old version; the merge is planned        | refused     |
//! | commit    | stopped (world.rs): safe point decided again      | refused     |
//! | merge     | stopped: the plan checked and replayed, or merged | rolled back |
//! | transform | stopped                                           | rolled back |
//! | check     | stopped: `[check] after`                          | rolled back |
//!
//! A lazy migration finishes after the pause, with the program running.
//!
//! The phases are the steps of a [`session::Session`]: a process alone runs
//! them in a row ([`apply`]); a member of a process tree runs them as its
//! root's coordinator says ([`member`]), so that every member is stopped
//! before any merges and none runs again before all have merged.

pub mod classify;
pub mod copies;
pub mod eager;
pub mod fault;
pub mod imports;
pub mod journal;
pub mod lazy;
pub mod member;
pub mod merge;
pub mod prepare;
pub mod prepared;
pub mod progress;
pub mod ptrmap;
pub mod retained;
pub mod rollback;
pub mod running;
pub mod safepoint;
pub mod seen;
pub mod session;
pub mod stage;
pub mod support;
pub mod sweep;
pub mod transform;
pub mod watchdog;
pub mod world;

use std::time::Instant;

use pyo3::prelude::*;

use crate::diagnostic::Problem;
use crate::plan::Plan;
use crate::process::state::{GateError, ProcessState, Running, UpdateSource};
use crate::process::update_point::points;
use crate::process::wire::ModuleSources;
use crate::report::{Outcome, Report};
use crate::spec::{self, SpecSource};
use journal::Journal;
use progress::{ClientGone, Progress};
use support::Support;
use watchdog::Deadline;

/// What `status` shows about this process: its state, and the objects of
/// earlier versions the engine tracks.
pub fn status(state: &ProcessState) -> crate::process::wire::ProgramInfo {
    let mut info = state.info(retained::summary());
    info.prepared = prepared::info().map(Box::new);
    info
}

/// In a freshly forked child (GIL held, one thread): renews the engine's
/// per-process data that must be copied rather than made afresh, and the
/// program's switch interval if the parent was waiting for a commit. The
/// world's gate, the switch-interval lock and the watchdog renew
/// themselves on first use ([`crate::process::per_process`]); the
/// committed stack moved with the process state.
pub fn after_fork_in_child(py: Python<'_>) {
    retained::after_fork_in_child(py);
    world::after_fork_in_child(py);
}

/// Before a fork, in the parent (GIL held): ends the engine's idle helper
/// thread (the watchdog), which the next update starts again. See
/// `host::fork::before`.
#[cfg_attr(not(all(Py_3_12, not(Py_3_13))), allow(dead_code))] // used by the 3.12 fork hooks
pub fn pause_for_fork() {
    watchdog::pause_for_fork();
}

/// For `pyreload run --reload`: the loaded modules whose files these are,
/// in reload order.
pub fn modules_for_files(state: &ProcessState, files: &[std::path::PathBuf]) -> Result<Vec<String>, Problem> {
    let _gate = state.begin_update().map_err(|e| Problem::new(e.to_string()))?;
    Python::attach(|py| {
        let support = Support::load(py).map_err(|e| Problem::new(e.to_string()))?;
        let paths = files.iter().map(|f| f.display().to_string()).collect();
        support
            .modules_for_files(paths)
            .map_err(|e| support.problem(py, "could not map files to modules", &e))
    })
}

/// For `pyreload status --collect`: a full garbage collection, so that the
/// objects of earlier versions still listed afterwards are really kept
/// alive by something.
pub fn collect_garbage(state: &ProcessState) -> Result<(), Problem> {
    let _gate = state
        .begin_update()
        .map_err(|e| Problem::new(format!("cannot collect garbage now: {e}")))?;
    Python::attach(|py| retained::collect(py).map_err(|e| Problem::new(format!("gc.collect() failed: {e}"))))
}

/// For `pyreload diff`: the running and the new source of every module the
/// spec updates. Resolves the spec as an apply would, and changes nothing.
pub fn sources(state: &ProcessState, spec_path: &str, spec_text: &str) -> Result<Vec<ModuleSources>, Problem> {
    let source = SpecSource {
        path: spec_path.to_string(),
        text: spec_text.to_string(),
    };
    let spec = spec::parse(&source).map_err(|mut problems| problems.remove(0))?;
    let _gate = state
        .begin_update()
        .map_err(|e| Problem::new(format!("cannot read the program's sources now: {e}")))?;
    Python::attach(|py| {
        let support = Support::load(py).map_err(|e| Problem::new(format!("could not load pyreload's helpers: {e}")))?;
        let plan = prepare::prepare(py, &support, state, &source, &spec)?;
        let mut out = Vec::new();
        for m in &plan.modules {
            let (running, unknown) = if m.new {
                (None, None)
            } else {
                let module = m.module.bind(py).as_any();
                let file = support.module_source(module).ok().flatten();
                match running::of(state, &m.name, module, file.as_deref()) {
                    Running::Known { path, text } => (Some((path, text)), None),
                    Running::Unknown { why } => (None, Some(why)),
                }
            };
            out.push(ModuleSources {
                module: m.name.clone(),
                running,
                unknown,
                new_path: m.source.clone(),
                new_text: m.text.clone(),
            });
        }
        Ok(out)
    })
}

/// Validates the spec against the running program and, unless `dry_run`,
/// applies it. `Err` means the request could not be served at all (busy,
/// exiting, unparsable); refusals, cancellations and rollbacks are reports.
/// `client_gone` tells whether whoever asked has stopped waiting: until the
/// commit starts, the update is then cancelled (see [`progress`]).
pub fn apply(
    state: &ProcessState,
    spec_path: &str,
    spec_text: &str,
    dry_run: bool,
    client_gone: Option<ClientGone<'_>>,
) -> Result<Report, Problem> {
    let started = Instant::now();
    let source = SpecSource {
        path: spec_path.to_string(),
        text: spec_text.to_string(),
    };
    let spec = spec::parse(&source).map_err(|mut problems| problems.remove(0))?;
    let _gate = state.begin_update().map_err(|e| match e {
        GateError::Busy => prepared::busy_problem().unwrap_or_else(|| {
            Problem::new("another update is in progress in this program; nothing was changed")
                .with_help("wait for it to finish and try again; `pyreload status` shows the history")
        }),
        GateError::Exiting => Problem::new("the program is exiting; nothing was changed"),
    })?;
    let mut report = report_for(state, &spec);
    let progress = Progress::begin(state, &report.update, client_gone);
    Python::attach(|py| session::run_alone(py, state, &progress, &source, &spec, dry_run, &mut report));
    report.timings.total_ms = ms(started);
    if !dry_run {
        state.record_attempt(&report);
    }
    drop(progress);
    Ok(report)
}

/// The report of `spec` in this process, before it has done anything.
pub(crate) fn report_for(state: &ProcessState, spec: &spec::Spec) -> Report {
    Report::begin(
        spec.update.name.get_ref().clone(),
        state.name.clone(),
        state.pid,
        state.version(),
        spec.update.to.get_ref().clone(),
    )
}

/// Why a wait ended without its safe point.
pub enum Stop {
    /// The safe point was not reached in time, or could not be decided.
    Refused(Problem),
    /// Nobody waits for the update any more, or the program is exiting.
    Abandoned(Problem),
}

/// Waits, with the program running, until the safe point looks reachable.
pub(crate) fn wait(
    py: Python<'_>,
    support: &Support<'_>,
    plan: &Plan,
    progress: &Progress<'_>,
    pacer: &mut safepoint::Pacer,
    checks: &mut u32,
) -> Result<(), Stop> {
    // How long to block for an update point before looking whether the
    // update was abandoned.
    const ARRIVAL_SLICE: std::time::Duration = std::time::Duration::from_millis(20);
    loop {
        if let Some(problem) = progress.abandoned() {
            return Err(Stop::Abandoned(problem));
        }
        if plan.update_point.is_some() && points().waiting().is_empty() {
            let until = pacer.deadline().min(Instant::now() + ARRIVAL_SLICE);
            if !py.detach(|| points().wait_for_arrival(until)) && Instant::now() < pacer.deadline() {
                continue;
            }
        }
        *checks += 1;
        let blockers = safepoint::check(py, support, plan, &points().waiting()).map_err(Stop::Refused)?;
        progress.blocked(describe_blockers_now(&blockers, plan));
        if blockers.clear() {
            return Ok(());
        }
        if !pacer.next(py) {
            return Err(Stop::Refused(safepoint::timed_out(plan, &blockers)));
        }
    }
}

/// How long a condition may still run once the wait's deadline has passed.
pub(crate) const WAIT_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

/// Says so when a failure came from the watchdog interrupting code that ran
/// past `limit`.
pub(crate) fn interrupted(mut problem: Problem, deadline: &Deadline<'_>, limit: &str) -> Problem {
    if deadline.fired() > 0 {
        problem.message = format!(
            "the update's own code ran past {limit} and was interrupted; {}",
            problem.message
        );
        problem.help = Some(
            "find the loop in the traceback below; if the code is only slow, raise the limit in [safe_point]".into(),
        );
    }
    problem
}

/// How [`interrupted`] names the commit deadline.
pub(crate) fn commit_limit(timeout: std::time::Duration) -> String {
    format!("commit_timeout_ms ({} ms)", timeout.as_millis())
}

/// What a commit that went through hands back, to finish after the pause.
pub struct Done {
    merged: merge::Merged,
    lazies: Vec<transform::PendingLazy>,
    /// The changes, kept for `pyreload rollback`.
    journal: Journal,
    /// The sources the update replaced (filled in by `Session::publish`).
    previous_sources: Vec<(String, Option<UpdateSource>)>,
}

impl Done {
    /// Rolls a merge back inside the stopped world, before anything ran
    /// it: a tree member that committed `together` whose tree did not.
    pub(crate) fn undo(self, py: Python<'_>, support: &Support<'_>, report: &mut Report, mut problem: Problem) {
        let t = Instant::now();
        let errors = self.journal.rollback(py, support);
        report.timings.rollback_ms = ms(t);
        for e in errors {
            problem = problem.caused_by(format!("rollback could not restore a value: {e}"));
        }
        report.outcome = Outcome::RolledBack;
        report.problem = Some(problem);
    }
}

/// The commit proper, inside the stopped world: merge, check, and roll back
/// on any failure. When merged, returns what is left to do: publish, then,
/// once the world runs again, finish.
// Not inlined: bench/update_size.py profiles it by name under callgrind.
#[inline(never)]
fn commit(
    py: Python<'_>,
    support: &Support<'_>,
    plan: &Plan,
    staged: &stage::Staged,
    samples: &[Option<Py<pyo3::types::PyList>>],
    deadline: Deadline<'_>,
    report: &mut Report,
) -> Option<Done> {
    let gc = GcPaused::new(support);
    let mut journal = Journal::default();
    let t = Instant::now();
    let copies_before = copies::snapshot(py, plan);
    let merged = merge::merge(py, support, plan, staged, &mut journal)
        .and_then(|merged| add_new_modules(py, support, plan, &mut journal).map(|()| merged))
        .and_then(|merged| {
            let (reports, lazies) = transform::run(py, support, plan, &report.update, samples, &mut journal)?;
            report.transforms = reports;
            Ok((merged, lazies))
        })
        .and_then(|(mut merged, lazies)| {
            let followed = copies::follow(py, plan, &copies_before, &mut journal)
                .map_err(|e| support.problem(py, "could not re-point the copies of the reloaded modules' names", &e))?;
            merged.add_rebound(followed);
            Ok((merged, lazies))
        });
    report.timings.commit_ms = ms(t);
    if let Ok((merged, _)) = &merged {
        report.merge_ahead = Some(crate::report::MergeAhead::from(&merged.ahead));
    }
    let (merged, failure) = match merged {
        Ok(merged) => {
            let failure = plan.after.as_ref().and_then(|after| {
                let t = Instant::now();
                let checked = safepoint::evaluate(py, support, after, "[check] after");
                report.timings.check_ms = ms(t);
                match checked {
                    Ok(true) => None,
                    Ok(false) => Some(
                        Problem::new(format!(
                            "`[check] after` was false after the commit: {}; the update was rolled back",
                            after.text
                        ))
                        .at(after.location.clone(), "evaluated to a false value"),
                    ),
                    Err(mut problem) => {
                        problem.message = format!("{} after the commit; the update was rolled back", problem.message);
                        Some(problem)
                    }
                }
            });
            (Some(merged), failure)
        }
        Err(problem) => (None, Some(problem)),
    };
    // No more of the update's own code runs: undoing or finishing must not
    // be interrupted.
    let failure = failure.map(|problem| interrupted(problem, &deadline, &commit_limit(plan.commit_timeout)));
    drop(deadline);
    let result = match failure {
        Some(mut problem) => {
            let t = Instant::now();
            let errors = journal.rollback(py, support);
            report.timings.rollback_ms = ms(t);
            for e in errors {
                problem = problem.caused_by(format!("rollback could not restore a value: {e}"));
            }
            report.outcome = Outcome::RolledBack;
            report.problem = Some(problem);
            None
        }
        None => {
            report.outcome = Outcome::Committed;
            merged.map(|(merged, lazies)| Done {
                merged,
                lazies,
                journal,
                previous_sources: Vec::new(),
            })
        }
    };
    drop(gc);
    result
}

/// Watches what this update made garbage: the staging modules (but those of
/// new modules, which are now live) and the staged classes merged into live
/// ones. See [`retained`].
pub(crate) fn track_garbage(py: Python<'_>, plan: &Plan, staged: &stage::Staged, merged: &merge::Merged, update: &str) {
    for (m, module) in plan.modules.iter().zip(&staged.modules) {
        if !m.new {
            let _ = retained::track(module.bind(py).as_any(), retained::Kind::Module, update, &m.name);
        }
    }
    for class in merged.replaced_classes() {
        let class = class.bind(py);
        let name = ["__module__", "__qualname__"]
            .map(|a| class.getattr(a).map(|v| v.to_string()).unwrap_or_default())
            .join(".");
        let _ = retained::track(class, retained::Kind::Class, update, &name);
    }
}

/// With the world running again: finishes lazy migrations, so their hooks
/// come off and converted data can be rolled back.
pub(crate) fn finish_lazy(
    py: Python<'_>,
    state: &ProcessState,
    plan: &Plan,
    lazies: Vec<transform::PendingLazy>,
    report: &mut Report,
) {
    for lazy in lazies {
        let index = lazy.report;
        let transform = &mut report.transforms[index];
        let target = transform.target.clone();
        if let Err(e) = transform::sweep(py, lazy, transform, plan.commit_timeout) {
            report
                .warnings
                .push(format!("the lazy migration of `{target}` could not finish: {e}"));
        }
        let failures = report.transforms[index].lazy.as_ref().map_or(0, |l| l.failures.len());
        if failures > 0 {
            report.warnings.push(format!(
                "{failures} instance(s) of `{target}` could not be converted and keep their old state; using them raises"
            ));
            state.block_last_committed(format!(
                "the lazy migration of `{target}` failed on {failures} instance(s), which were never converted"
            ));
        }
    }
}

/// Puts the modules new in this version, and those only the update needed
/// (see [`imports`]), into `sys.modules` and onto their parent package, as
/// an import would.
fn add_new_modules(py: Python<'_>, support: &Support<'_>, plan: &Plan, journal: &mut Journal) -> Result<(), Problem> {
    let fail = |e: PyErr| support.problem(py, "could not add a new module", &e);
    let sys_modules = py.import("sys").and_then(|s| s.getattr("modules")).map_err(fail)?;
    let sys_modules = sys_modules
        .cast_into::<pyo3::types::PyDict>()
        .map_err(|e| Problem::new(e.to_string()))?;
    for m in plan.modules.iter().filter(|m| m.new) {
        let module = m.module.bind(py).clone().into_any();
        let name = pyo3::types::PyString::new(py, &m.name).into_any();
        journal.set_item(&sys_modules, &name, &module).map_err(fail)?;
        if let Some((parent, child)) = m.name.rsplit_once('.') {
            if let Some(parent) = sys_modules.get_item(parent).map_err(fail)? {
                journal.set_attr(&parent, child, &module).map_err(fail)?;
            }
        }
    }
    imports::publish(py, support, &plan.imports, journal)
}

/// For `check`: the plan, what the update would do, found without running
/// any new code. Functions and classes come from comparing code objects,
/// updated constants from the literals the new body binds; transforms say
/// how many instances they would convert now.
pub(crate) fn predict(py: Python<'_>, support: &Support<'_>, plan: &Plan, report: &mut Report) -> Result<(), Problem> {
    for (m, module_report) in plan.modules.iter().zip(report.modules.iter_mut()) {
        let (functions, classes) = support
            .predict(m.module.bind(py).as_any(), m.code.bind(py))
            .map_err(|e| support.problem(py, &format!("could not compare the code of `{}`", m.name), &e))?;
        module_report.functions = functions;
        module_report.classes = classes;
        module_report.globals.reset = m.reset.iter().cloned().collect();
        module_report.globals.transformed = m.transformed.iter().cloned().collect();
        module_report.globals.kept = kept_globals(py, support, m)?;
        module_report.globals.updated = support
            .literal_updates(m.module.bind(py).as_any(), m.code.bind(py))
            .map_err(|e| support.problem(py, &format!("could not predict the constants of `{}`", m.name), &e))?
            .into_iter()
            .filter(|n| !m.reset.contains(n) && !m.keep.contains(n) && !m.transformed.contains(n))
            .collect();
    }
    for (module_report, copies) in report.modules.iter_mut().zip(copies::describe(plan)) {
        module_report.copies = copies;
    }
    for t in &plan.transforms {
        let (kind, instances) = match t.target {
            crate::plan::TransformTarget::Global { .. } => ("global", 1),
            crate::plan::TransformTarget::Class => (
                "class",
                support
                    .resolve(&t.path)
                    .and_then(|class| support.instances_of(&class))
                    .map(|list| list.len())
                    .unwrap_or(0),
            ),
        };
        report.transforms.push(crate::report::TransformReport {
            target: t.path.clone(),
            kind: kind.into(),
            instances,
            ..Default::default()
        });
    }
    Ok(())
}

/// The data globals the merge will keep: bound again by the new module body,
/// holding data (not a constant, not code) now, and not listed in `reset`,
/// `keep` or a transform.
fn kept_globals(py: Python<'_>, support: &Support<'_>, m: &crate::plan::ModulePlan) -> Result<Vec<String>, Problem> {
    let fail = |e: PyErr| support.problem(py, &format!("could not predict the globals of `{}`", m.name), &e);
    let live = m.module.bind(py).dict();
    let mut kept = Vec::new();
    for name in support.stored_names(m.code.bind(py)).map_err(fail)? {
        if merge::is_module_machinery(&name)
            || merge::is_module_definition(&name)
            || m.reset.contains(&name)
            || m.transformed.contains(&name)
        {
            continue;
        }
        let Some(value) = live.get_item(&name).map_err(fail)? else {
            continue;
        };
        let data = !support.is_constant(&value).map_err(fail)? && !support.is_code_like(&value).map_err(fail)?;
        if data || m.keep.contains(&name) {
            kept.push(name);
        }
    }
    // `Class.attr` in `keep`: a class attribute kept.
    kept.extend(m.keep.iter().filter(|k| k.contains('.')).cloned());
    Ok(kept)
}

/// For `check`: what would hold the safe point back right now.
pub(crate) fn describe_blockers_now(b: &safepoint::Blockers, plan: &Plan) -> Vec<String> {
    let mut out: Vec<String> = b
        .threads
        .iter()
        .map(|f| {
            format!(
                "thread `{}` is in {} at {}:{} now; apply would wait for it",
                f.thread, f.function, f.file, f.line
            )
        })
        .collect();
    out.extend(b.suspended.iter().map(|s| {
        format!(
            "{} {} is suspended at {}:{} now; apply would wait for it",
            s.kind, s.function, s.file, s.line
        )
    }));
    if b.condition_false {
        let text = plan.condition.as_ref().map(|c| c.text.as_str()).unwrap_or_default();
        out.push(format!("the condition `{text}` is false now; apply would wait for it"));
    }
    out
}

/// Keeps the cyclic garbage collector off for the commit: a collection
/// could run finalizers (Python code) in the middle of the merge.
struct GcPaused<'py> {
    gc: Option<Bound<'py, PyAny>>,
}

impl<'py> GcPaused<'py> {
    fn new(support: &Support<'py>) -> Self {
        let gc = support.gc().ok().filter(|gc| {
            gc.call_method0("isenabled")
                .and_then(|e| e.is_truthy())
                .unwrap_or(false)
                && gc.call_method0("disable").is_ok()
        });
        GcPaused { gc }
    }
}

impl Drop for GcPaused<'_> {
    fn drop(&mut self) {
        if let Some(gc) = &self.gc {
            let _ = gc.call_method0("enable");
        }
    }
}

pub(crate) fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1000.0
}
