//! Waiting for the safe point: no thread may be running a function listed
//! in `[safe_point] inactive`.
//!
//! The check runs with the GIL held and then sleeps with it released, so
//! the program keeps serving at full speed while an update waits.

use std::time::{Duration, Instant};

use pyo3::prelude::*;

use super::support::{ActiveFrame, Support};
use crate::diagnostic::Problem;
use crate::plan::Plan;

/// Pause between two checks of the safe point.
pub const POLL_INTERVAL: Duration = Duration::from_millis(2);

/// The threads that hold the safe point back right now.
pub fn blockers(py: Python<'_>, support: &Support<'_>, plan: &Plan) -> Result<Vec<ActiveFrame>, Problem> {
    let ids = plan.inactive_code_ids.bind(py);
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    support
        .active_frames(ids.as_any())
        .map_err(|e| support.problem(py, "could not inspect the program's threads", &e))
}

/// Waits until [`blockers`] is empty or `deadline` passes. Counts checks in
/// `checks`.
pub fn wait(
    py: Python<'_>,
    support: &Support<'_>,
    plan: &Plan,
    deadline: Instant,
    checks: &mut u32,
) -> Result<(), Problem> {
    loop {
        let found = blockers(py, support, plan)?;
        if !plan.inactive.is_empty() {
            *checks += 1;
        }
        if found.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(timed_out(plan, &found));
        }
        py.detach(|| std::thread::sleep(POLL_INTERVAL));
    }
}

/// The refusal when the safe point never came: which thread was where.
pub fn timed_out(plan: &Plan, found: &[ActiveFrame]) -> Problem {
    let mut problem = Problem::new(format!(
        "the safe point was not reached within {} ms: {} thread{} still running {}; the program was not changed",
        plan.timeout.as_millis(),
        found.len(),
        if found.len() == 1 { " is" } else { "s are" },
        plan.inactive
            .iter()
            .map(|f| format!("`{f}`"))
            .collect::<Vec<_>>()
            .join(", ")
    ))
    .with_help("make the function return sooner, or raise [safe_point] timeout_ms");
    for frame in found {
        problem = problem.caused_by(format!(
            "thread `{}` is in {} at {}:{}",
            frame.thread, frame.function, frame.file, frame.line
        ));
        for line in &frame.stack {
            problem = problem.caused_by(format!("    {line}"));
        }
    }
    problem
}
