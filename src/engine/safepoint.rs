//! The safe point: when the program can take the update.
//!
//! It holds when
//! - no thread runs a function that must be inactive (except threads
//!   waiting at the update point, whose frames finish with the code they
//!   started with),
//! - no generator, coroutine or async generator is suspended in one,
//! - the `condition`, if any, is true,
//! - and, with `update_point`, a thread waits at that point.
//!
//! While the update waits, checks run with the GIL and sleep without it, at
//! a rate that backs off from 1 ms to 20 ms, so the program keeps serving.
//! The check that decides the commit runs inside the stopped world.

use std::time::{Duration, Instant};

use pyo3::prelude::*;

use super::support::{ActiveFrame, Support, Suspended};
use crate::diagnostic::Problem;
use crate::plan::{Expression, Plan};

/// The first pause between two checks; it doubles up to [`MAX_INTERVAL`].
pub const FIRST_INTERVAL: Duration = Duration::from_millis(1);
pub const MAX_INTERVAL: Duration = Duration::from_millis(20);

/// What held the safe point back at one check.
#[derive(Debug, Default)]
pub struct Blockers {
    pub threads: Vec<ActiveFrame>,
    pub suspended: Vec<Suspended>,
    pub condition_false: bool,
    pub no_thread_at_point: bool,
}

impl Blockers {
    pub fn clear(&self) -> bool {
        self.threads.is_empty() && self.suspended.is_empty() && !self.condition_false && !self.no_thread_at_point
    }
}

/// Evaluates the safe point now. `at_point` are the threads waiting at the
/// update point. A condition that raises is an error, not a wait: the spec
/// is wrong and waiting will not fix it.
pub fn check(py: Python<'_>, support: &Support<'_>, plan: &Plan, at_point: &[u64]) -> Result<Blockers, Problem> {
    let mut blockers = Blockers {
        no_thread_at_point: plan.update_point.is_some() && at_point.is_empty(),
        ..Blockers::default()
    };
    let ids = plan.inactive_code_ids.bind(py);
    if !ids.is_empty() {
        blockers.threads = support
            .active_frames(ids.as_any(), at_point)
            .map_err(|e| support.problem(py, "could not inspect the program's threads", &e))?;
    }
    let generators = plan.generator_codes.bind(py);
    if !generators.is_empty() {
        blockers.suspended = support
            .suspended(generators.as_any())
            .map_err(|e| support.problem(py, "could not look for suspended generators and coroutines", &e))?;
    }
    if let Some(condition) = &plan.condition {
        blockers.condition_false = !evaluate(py, support, condition, "[safe_point] condition")?;
    }
    Ok(blockers)
}

/// Evaluates a spec expression in the program. Raising is an error that
/// points at the expression.
pub fn evaluate(py: Python<'_>, support: &Support<'_>, expr: &Expression, what: &str) -> Result<bool, Problem> {
    let code = expr.code.bind(py);
    support
        .check_globals(code)
        .and_then(|globals| py.import("builtins")?.getattr("eval")?.call1((code, globals)))
        .and_then(|value| value.is_truthy())
        .map_err(|e| {
            let mut problem = support.problem(py, &format!("`{what}` raised"), &e);
            problem.location = Some(Box::new(expr.location.clone()));
            problem.label = Some("raised".into());
            problem
        })
}

/// Paces the checks of a safe point: sleeps without the GIL between them,
/// doubling the pause from [`FIRST_INTERVAL`] to [`MAX_INTERVAL`], until
/// the deadline.
pub struct Pacer {
    interval: Duration,
    deadline: Instant,
}

impl Pacer {
    pub fn new(deadline: Instant) -> Pacer {
        Pacer {
            interval: FIRST_INTERVAL,
            deadline,
        }
    }

    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// Waits for the next check. Returns false, without waiting, once the
    /// deadline has passed.
    pub fn next(&mut self, py: Python<'_>) -> bool {
        if Instant::now() >= self.deadline {
            return false;
        }
        let until = (Instant::now() + self.interval).min(self.deadline);
        py.detach(|| std::thread::sleep(until.saturating_duration_since(Instant::now())));
        self.interval = (self.interval * 2).min(MAX_INTERVAL);
        true
    }
}

/// The refusal when the safe point never came: what held it back, and where.
pub fn timed_out(plan: &Plan, blockers: &Blockers) -> Problem {
    let mut reasons = Vec::new();
    if !blockers.threads.is_empty() || !blockers.suspended.is_empty() {
        let n = blockers.threads.len() + blockers.suspended.len();
        reasons.push(format!(
            "{n} {} still running a function the update must not replace while running",
            if n == 1 {
                "thread or task is"
            } else {
                "threads or tasks are"
            }
        ));
    }
    if blockers.condition_false {
        let text = plan.condition.as_ref().map(|c| c.text.as_str()).unwrap_or_default();
        reasons.push(format!("the condition `{text}` stayed false"));
    }
    if blockers.no_thread_at_point {
        reasons.push(format!(
            "no thread reached pyreload.update_point({:?})",
            plan.update_point.as_deref().unwrap_or_default()
        ));
    }
    let mut problem = Problem::new(format!(
        "the safe point was not reached within {} ms: {}; the program was not changed",
        plan.timeout.as_millis(),
        reasons.join(", and ")
    ))
    .with_help("the update can be applied again later; raise [safe_point] timeout_ms, or list in `allow_active` the functions whose running calls may finish with the old code");
    for frame in &blockers.threads {
        problem = problem.caused_by(format!(
            "thread `{}` is in {} at {}:{}",
            frame.thread, frame.function, frame.file, frame.line
        ));
        for line in &frame.stack {
            problem = problem.caused_by(format!("    {line}"));
        }
    }
    for s in &blockers.suspended {
        let task = s
            .task
            .as_ref()
            .map(|t| format!(" (asyncio task `{t}`)"))
            .unwrap_or_default();
        problem = problem.caused_by(format!(
            "{} {} is suspended at {}:{}{task}",
            s.kind, s.function, s.file, s.line
        ));
    }
    problem
}
