//! Stage: run each new module body into a fresh staging module.
//!
//! This runs the program's own code (module bodies, imports of new
//! dependencies, file reads), so it must not happen while the world is
//! stopped. It also must not be visible: the staging modules live outside
//! `sys.modules`, and the live modules are untouched, so other threads go
//! on running the old version, consistently, until the commit merges the
//! staged namespaces in one step. Modules the new bodies import for the
//! first time are staged too, out of `sys.modules` until the commit
//! publishes them (see [`super::imports`]).

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyModule};

use super::imports;
use super::support::Support;
use crate::diagnostic::Problem;
use crate::plan::Plan;

/// Attributes a staging module copies from the live one, so the new body
/// sees the same `__file__`, package and loader.
const MODULE_DUNDERS: [&str; 6] = [
    "__file__",
    "__package__",
    "__spec__",
    "__loader__",
    "__path__",
    "__cached__",
];

/// The new version of every module, ready to merge.
pub struct Staged {
    /// One per `plan.modules`, in the same order.
    pub modules: Vec<Py<PyModule>>,
    /// Modules the new bodies imported that the program had not (staged
    /// in `plan.imports`).
    pub imported: Vec<String>,
    /// The merge's pairing and rebind list, made here with the program
    /// running (see [`super::merge::pair_ahead`]); the commit checks it
    /// still holds.
    pub ahead: Option<super::merge::Ahead>,
}

/// Runs the new module bodies. The modules they import for the first time
/// are recorded and stay visible until [`withdraw`], which the caller runs
/// once the update's deadline is disarmed, so that an interruption cannot
/// leave the withdrawal half done.
pub fn stage(py: Python<'_>, support: &Support<'_>, plan: &Plan) -> Result<Staged, Problem> {
    imports::show_and_begin(py, support, &plan.imports)?;
    let modules = run_bodies(py, support, plan)?;
    let ahead = super::merge::pair_ahead(py, support, plan, &modules);
    // The walk for suspended generators, made here with the program running,
    // so that the check in the stopped world looks only at what is newer
    // (support.py, `_generators_of`). A failure here is met again there.
    let generators = plan.generator_codes.bind(py);
    if !generators.is_empty() {
        let _ = support.suspended_before_the_pause(generators.as_any());
    }
    Ok(Staged {
        modules,
        imported: Vec::new(),
        ahead,
    })
}

/// Takes the modules staging imported (and those prepare did) out of
/// `sys.modules` until the commit; returns the names staging imported.
pub fn withdraw(py: Python<'_>, support: &Support<'_>, plan: &Plan) -> Result<Vec<String>, Problem> {
    imports::end(py, support, &plan.imports)
}

fn run_bodies(py: Python<'_>, support: &Support<'_>, plan: &Plan) -> Result<Vec<Py<PyModule>>, Problem> {
    let fail = |e: PyErr| support.problem(py, "could not prepare a staging module", &e);
    let staged = PyDict::new(py);
    let builtins_ns = support.staging_builtins(&staged).map_err(fail)?;
    let builtins = py.import("builtins").map_err(fail)?;
    let exec = builtins.getattr("exec").map_err(fail)?;
    let mut modules = Vec::new();
    for m in &plan.modules {
        let staging = PyModule::new(py, &m.name).map_err(fail)?;
        let ns = staging.dict();
        let live = m.module.bind(py).dict();
        for dunder in MODULE_DUNDERS {
            if let Some(v) = live.get_item(dunder).map_err(fail)? {
                ns.set_item(dunder, v).map_err(fail)?;
            }
        }
        ns.set_item("__builtins__", &builtins_ns).map_err(fail)?;
        staged.set_item(&m.name, &staging).map_err(fail)?;
        exec.call1((m.code.bind(py), &ns)).map_err(|e| {
            let mut p = support.problem_in(
                py,
                &format!(
                    "the new version of `{}` raised while loading; the program was not changed",
                    m.name
                ),
                &e,
                Some(&m.source),
            );
            p.help = Some("fix the module's top-level code; it runs once, as on a first import".into());
            p
        })?;
        modules.push(staging.unbind());
    }
    Ok(modules)
}
