//! A deliberately broken apply, for tests that must prove they can fail.
//!
//! With `PYRELOAD_FAULT=split-commit` in the program's environment, every
//! update behaves like a naive reloader: each module's new code runs into
//! its live namespace in turn, with the GIL released between modules, no
//! safe point, no staging and no stopped world. The no-mixed-versions test
//! uses it to show that it detects the mixing the real commit prevents.
//! Never set it outside tests.

use std::time::Duration;

use pyo3::prelude::*;

use super::support::Support;
use crate::diagnostic::Problem;
use crate::plan::Plan;

/// The environment variable that selects a fault.
pub const ENV_VAR: &str = "PYRELOAD_FAULT";

/// Whether the program was started with the split-commit fault.
pub fn split_commit_requested() -> bool {
    std::env::var(ENV_VAR).is_ok_and(|v| v == "split-commit")
}

/// Reloads module by module, letting other threads run in between.
pub fn split_commit(py: Python<'_>, support: &Support<'_>, plan: &Plan) -> Result<(), Problem> {
    let exec = py
        .import("builtins")
        .and_then(|b| b.getattr("exec"))
        .map_err(|e| support.problem(py, "split-commit fault", &e))?;
    for m in &plan.modules {
        exec.call1((m.code.bind(py), m.module.bind(py).dict()))
            .map_err(|e| support.problem(py, &format!("split-commit fault: `{}` raised", m.name), &e))?;
        py.detach(|| std::thread::sleep(Duration::from_millis(2)));
    }
    Ok(())
}
