//! Stage: run each new module body into a fresh staging module.
//!
//! This runs the program's own code (module bodies, imports of new
//! dependencies, file reads), so it must not happen while the world is
//! stopped. It also must not be visible: the staging modules live outside
//! `sys.modules`, and the live modules are untouched, so other threads go
//! on running the old version, consistently, until the commit merges the
//! staged namespaces in one step.

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyModule, PySet};

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
    /// Modules the new bodies imported that the program had not.
    pub imported: Vec<String>,
}

pub fn stage(py: Python<'_>, support: &Support<'_>, plan: &Plan) -> Result<Staged, Problem> {
    let before = sys_module_names(py).map_err(|e| support.problem(py, "could not read sys.modules", &e))?;
    let result = run_bodies(py, support, plan);
    let imported = new_module_names(py, &before).unwrap_or_default();
    match result {
        Ok(modules) => Ok(Staged { modules, imported }),
        Err(problem) => {
            forget_modules(py, &imported);
            Err(problem)
        }
    }
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

fn sys_module_names<'py>(py: Python<'py>) -> PyResult<Bound<'py, PySet>> {
    let keys = py.import("sys")?.getattr("modules")?.call_method0("keys")?;
    PySet::new(py, keys.try_iter()?.collect::<PyResult<Vec<_>>>()?)
}

fn new_module_names(py: Python<'_>, before: &Bound<'_, PySet>) -> PyResult<Vec<String>> {
    let now = sys_module_names(py)?;
    let mut added: Vec<String> = now.call_method1("difference", (before,))?.extract()?;
    added.sort();
    Ok(added)
}

/// Removes modules that a failed or undone update imported, so the program
/// is left with the modules it had.
pub fn forget_modules(py: Python<'_>, names: &[String]) {
    let Ok(modules) = py.import("sys").and_then(|sys| sys.getattr("modules")) else {
        return;
    };
    for name in names {
        let _ = modules.call_method1("pop", (name, py.None()));
    }
}
