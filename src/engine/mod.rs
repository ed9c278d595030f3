//! The update engine: prepare → wait → stage → commit → check, with
//! rollback of the commit on any failure.
//!
//! | phase    | the program                          | on failure |
//! |----------|--------------------------------------|------------|
//! | prepare  | runs; nothing changed                | refused    |
//! | wait     | runs; GIL released between checks    | refused    |
//! | stage    | runs the old version, consistently   | refused    |
//! | commit   | paused: one GIL hold, no bytecode    | rolled back|
//! | check    | `[check] after` evaluated            | rolled back|

pub mod journal;
pub mod merge;
pub mod prepare;
pub mod safepoint;
pub mod stage;
pub mod support;

use std::time::Instant;

use pyo3::prelude::*;

use crate::control::protocol::HistoryEntry;
use crate::diagnostic::Problem;
use crate::host::state::{unix_seconds, GateError, HostState};
use crate::plan::AfterCheck;
use crate::report::{ModuleReport, Outcome, Report, Timings};
use crate::spec::{self, SpecSource};
use journal::Journal;
use support::Support;

/// Validates the spec against the running program and, unless `dry_run`,
/// applies it. `Err` means the request could not be served at all (busy,
/// exiting, unparsable); refusals and rollbacks are reports.
pub fn apply(state: &HostState, spec_path: &str, spec_text: &str, dry_run: bool) -> Result<Report, Problem> {
    let started = Instant::now();
    let source = SpecSource {
        path: spec_path.to_string(),
        text: spec_text.to_string(),
    };
    let spec = spec::parse(&source).map_err(|mut problems| problems.remove(0))?;
    let _gate = state.begin_update().map_err(|e| match e {
        GateError::Busy => Problem::new("another update is in progress in this program; nothing was changed")
            .with_help("wait for it to finish and try again; `pyreload status` shows the history"),
        GateError::Exiting => Problem::new("the program is exiting; nothing was changed"),
    })?;
    let mut report = Report {
        update: spec.update.name.get_ref().clone(),
        program: state.name.clone(),
        pid: state.pid,
        from: state.version(),
        to: spec.update.to.get_ref().clone(),
        outcome: Outcome::Refused,
        modules: Vec::new(),
        timings: Timings::default(),
        safe_point_checks: 0,
        problem: None,
        warnings: Vec::new(),
    };
    Python::attach(|py| run(py, state, &source, &spec, dry_run, &mut report));
    report.timings.total_ms = ms(started);
    if !dry_run {
        state.record(HistoryEntry {
            name: report.update.clone(),
            from: report.from.clone(),
            to: report.to.clone(),
            at: unix_seconds(std::time::SystemTime::now()),
            outcome: report.outcome,
            pause_ms: report.timings.pause_ms,
            total_ms: report.timings.total_ms,
        });
    }
    Ok(report)
}

fn run(py: Python<'_>, state: &HostState, source: &SpecSource, spec: &spec::Spec, dry_run: bool, report: &mut Report) {
    let support = match Support::load(py) {
        Ok(s) => s,
        Err(e) => {
            report.problem = Some(Problem::new(format!("could not load pyreload's helpers: {e}")));
            return;
        }
    };
    let t = Instant::now();
    let plan = prepare::prepare(py, &support, state, source, spec);
    report.timings.prepare_ms = ms(t);
    let plan = match plan {
        Ok(plan) => plan,
        Err(problem) => return report.problem = Some(problem),
    };
    report.modules = plan
        .modules
        .iter()
        .map(|m| ModuleReport {
            module: m.name.clone(),
            source: m.source.clone(),
            ..ModuleReport::default()
        })
        .collect();

    if dry_run {
        match safepoint::blockers(py, &support, &plan) {
            Ok(found) => report.warnings.extend(found.iter().map(|f| {
                format!(
                    "thread `{}` is in {} at {}:{} now; apply would wait for it",
                    f.thread, f.function, f.file, f.line
                )
            })),
            Err(problem) => return report.problem = Some(problem),
        }
        report.outcome = Outcome::Checked;
        return;
    }

    let deadline = Instant::now() + plan.timeout;
    let t = Instant::now();
    let waited = safepoint::wait(py, &support, &plan, deadline, &mut report.safe_point_checks);
    report.timings.wait_ms = ms(t);
    if let Err(problem) = waited {
        return report.problem = Some(problem);
    }

    let t = Instant::now();
    let staged = stage::stage(py, &support, &plan);
    report.timings.stage_ms = ms(t);
    let staged = match staged {
        Ok(staged) => staged,
        Err(problem) => return report.problem = Some(problem),
    };
    if !staged.imported.is_empty() {
        report.warnings.push(format!(
            "the new code imported modules the program had not: {}",
            staged.imported.join(", ")
        ));
    }

    // Staging let other threads run, so the safe point is checked again in
    // the same GIL hold as the commit.
    loop {
        let found = match safepoint::blockers(py, &support, &plan) {
            Ok(found) => found,
            Err(problem) => {
                stage::forget_modules(py, &staged.imported);
                return report.problem = Some(problem);
            }
        };
        if found.is_empty() {
            break;
        }
        report.safe_point_checks += 1;
        if Instant::now() >= deadline {
            stage::forget_modules(py, &staged.imported);
            return report.problem = Some(safepoint::timed_out(&plan, &found));
        }
        py.detach(|| std::thread::sleep(safepoint::POLL_INTERVAL));
    }

    let gc = GcPaused::new(py);
    let mut journal = Journal::default();
    let t = Instant::now();
    let merged = merge::merge(py, &support, &plan, &staged, &mut journal);
    report.timings.commit_ms = ms(t);
    let (merged, failure) = match merged {
        Ok(merged) => {
            let failure = match &plan.after {
                Some(after) => {
                    let t = Instant::now();
                    let checked = evaluate_after(py, &support, after);
                    report.timings.check_ms = ms(t);
                    checked.err()
                }
                None => None,
            };
            (Some(merged), failure)
        }
        Err(problem) => (None, Some(problem)),
    };
    if let Some(mut problem) = failure {
        let t = Instant::now();
        let errors = journal.rollback(py);
        stage::forget_modules(py, &staged.imported);
        report.timings.rollback_ms = ms(t);
        for e in errors {
            problem = problem.caused_by(format!("rollback could not restore a value: {e}"));
        }
        report.outcome = Outcome::RolledBack;
        report.problem = Some(problem);
    } else {
        report.outcome = Outcome::Committed;
        state.set_version(Some(plan.to.clone()));
    }
    drop(gc);
    let t = &mut report.timings;
    t.pause_ms = t.commit_ms + t.check_ms + t.rollback_ms;
    if let (Some(merged), Outcome::Committed) = (merged, report.outcome) {
        report.modules = merged.finish(py, &support);
    }
}

fn evaluate_after(py: Python<'_>, support: &Support<'_>, after: &AfterCheck) -> Result<(), Problem> {
    let code = after.code.bind(py);
    let result = support
        .check_globals(code)
        .and_then(|globals| py.import("builtins")?.getattr("eval")?.call1((code, globals)))
        .and_then(|value| value.is_truthy());
    match result {
        Ok(true) => Ok(()),
        Ok(false) => Err(Problem::new(format!(
            "`[check] after` was false after the commit: {}; the update was rolled back",
            after.text
        ))
        .at(after.location.clone(), "evaluated to a false value")),
        Err(e) => {
            let mut problem = support.problem(
                py,
                "`[check] after` raised after the commit; the update was rolled back",
                &e,
            );
            problem.location = Some(Box::new(after.location.clone()));
            problem.label = Some("raised".into());
            Err(problem)
        }
    }
}

/// Keeps the cyclic garbage collector off for the commit: a collection
/// could run finalizers (Python code) in the middle of the merge.
struct GcPaused<'py> {
    gc: Option<Bound<'py, PyModule>>,
}

impl<'py> GcPaused<'py> {
    fn new(py: Python<'py>) -> Self {
        let gc = py.import("gc").ok().filter(|gc| {
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

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1000.0
}
