//! Test-only faults, selected by `PYRELOAD_FAULT` in the program's
//! environment. Never set it outside tests.
//!
//! - `split-commit`: a deliberately broken apply, for tests that must prove
//!   they can fail. Every update behaves like a naive reloader: each
//!   module's new code runs into its live namespace in turn, with the GIL
//!   released between modules, no safe point, no staging and no stopped
//!   world. Between two modules it calls the program's
//!   `__main__.pyreload_fault_gap()` if there is one (else it sleeps 2 ms),
//!   so a test can let its threads run in the gap for as long as it needs.
//!   The no-mixed-versions test uses it to show that it detects the mixing
//!   the real commit prevents.
//! - `hold:DIR`: holds an update at the start of a phase for as long as the
//!   file `DIR/<phase>` (`prepare`, `wait`, `stage`, `commit`, `sweep`)
//!   exists, with the GIL released, so the program runs on. `status` shows
//!   the phase meanwhile. Tests use it to act (kill `apply`, use data a lazy
//!   migration has not swept yet) at a known point of an update instead of
//!   guessing one by timing. Without the variable, [`hold`] costs one
//!   cached lookup.

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use pyo3::prelude::*;

use super::support::Support;
use crate::diagnostic::Problem;
use crate::plan::Plan;
use crate::process::wire::Phase;

/// The environment variable that selects a fault.
pub const ENV_VAR: &str = "PYRELOAD_FAULT";

/// Whether the program was started with the split-commit fault.
pub fn split_commit_requested() -> bool {
    std::env::var(ENV_VAR).is_ok_and(|v| v == "split-commit")
}

/// The directory of the `hold:DIR` fault, read once.
fn hold_dir() -> Option<&'static PathBuf> {
    static DIR: OnceLock<Option<PathBuf>> = OnceLock::new();
    DIR.get_or_init(|| {
        std::env::var(ENV_VAR)
            .ok()
            .and_then(|v| v.strip_prefix("hold:").map(PathBuf::from))
    })
    .as_ref()
}

/// Called as an update enters `phase`: with the `hold:DIR` fault, waits
/// while `DIR/<phase>` exists. Test-only; returns at once otherwise.
pub fn hold(phase: Phase) {
    let Some(dir) = hold_dir() else {
        return;
    };
    let flag = dir.join(phase.name());
    if flag.exists() {
        Python::attach(|py| {
            py.detach(|| {
                while flag.exists() {
                    std::thread::sleep(Duration::from_millis(1));
                }
            })
        });
    }
}

/// Reloads module by module, letting other threads run in between.
pub fn split_commit(py: Python<'_>, support: &Support<'_>, plan: &Plan) -> Result<(), Problem> {
    let exec = py
        .import("builtins")
        .and_then(|b| b.getattr("exec"))
        .map_err(|e| support.problem(py, "split-commit fault", &e))?;
    let gap = py
        .import("__main__")
        .and_then(|main| main.getattr("pyreload_fault_gap"))
        .ok();
    for (i, m) in plan.modules.iter().enumerate() {
        exec.call1((m.code.bind(py), m.module.bind(py).dict()))
            .map_err(|e| support.problem(py, &format!("split-commit fault: `{}` raised", m.name), &e))?;
        if i + 1 == plan.modules.len() {
            break;
        }
        match &gap {
            Some(gap) => {
                gap.call0()
                    .map_err(|e| support.problem(py, "split-commit fault: pyreload_fault_gap() raised", &e))?;
            }
            None => py.detach(|| std::thread::sleep(Duration::from_millis(2))),
        }
    }
    Ok(())
}
