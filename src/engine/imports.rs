//! The modules only an update needs, staged like modules new in the version.
//!
//! Prepare imports the module of each transformer and the submodules a
//! `condition` or `[check] after` names; staging runs new module bodies,
//! which may import new dependencies. None of these is the program's until
//! the update commits. The update's thread records what it imports (a finder
//! at the front of `sys.meta_path`, blind to other threads), compiles the
//! program's own files from source (a quick edit can leave a stale `.pyc`
//! looking valid; the standard library and site-packages load from their
//! bytecode, as a big new dependency would be slow to compile), and
//! afterwards takes every such module back out of `sys.modules` and off its
//! package. So a refused,
//! cancelled or rolled-back update, `check` and `diff` leave `sys.modules`,
//! package attributes and `linecache` as they were, and the next update
//! imports a fixed file from disk, not the broken module of the last try.
//!
//! | when                | the staged modules                                  |
//! |---------------------|-----------------------------------------------------|
//! | prepare             | imported, then withdrawn                            |
//! | wait                | withdrawn; expressions see them through overlays    |
//! | stage               | shown while the new bodies run, then withdrawn      |
//! | commit              | published, journaled: a rollback withdraws them     |
//! | `pyreload rollback` | withdrawn with the rest of the update               |
//!
//! Built-in and extension (C) modules stay once imported: CPython never
//! unloads them, and some refuse to initialise twice. The stdlib modules
//! pyreload's own helpers use are loaded privately the same way (see
//! `support.py`), so even the first `check` adds nothing to the program.

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString};

use super::journal::Journal;
use super::support::Support;
use crate::diagnostic::Problem;
use crate::plan::Imports;

/// Starts staging the update's imports; [`end`] withdraws them again.
pub fn begin(py: Python<'_>, support: &Support<'_>) -> Result<Imports, Problem> {
    let imports = support
        .update_imports()
        .map_err(|e| support.problem(py, "could not start recording the update's imports", &e))?;
    let imports = Imports(Some(imports.unbind()));
    call(py, support, &imports, "begin", ())?;
    Ok(imports)
}

/// Stops recording and withdraws every staged module; returns the names
/// this recording staged.
pub fn end(py: Python<'_>, support: &Support<'_>, imports: &Imports) -> Result<Vec<String>, Problem> {
    if imports.0.is_none() {
        return Ok(Vec::new());
    }
    call(py, support, imports, "end", ())?
        .extract()
        .map_err(|e| support.problem(py, "could not withdraw the update's imports", &e))
}

/// Shows the staged modules to the new module bodies and records what they
/// import; [`end`] withdraws all of them.
pub fn show_and_begin(py: Python<'_>, support: &Support<'_>, imports: &Imports) -> Result<(), Problem> {
    call(py, support, imports, "show", ())?;
    call(py, support, imports, "begin", ()).map(drop)
}

/// Notes the source text the update compiled for `path`, for tracebacks.
pub fn ran(py: Python<'_>, support: &Support<'_>, imports: &Imports, path: &str, text: &str) -> Result<(), Problem> {
    call(py, support, imports, "ran", (path, text)).map(drop)
}

/// In the commit: puts the staged modules into `sys.modules` and onto their
/// packages, as the imports did, through the journal.
pub fn publish(py: Python<'_>, support: &Support<'_>, imports: &Imports, journal: &mut Journal) -> Result<(), Problem> {
    if imports.0.is_none() {
        return Ok(());
    }
    let fail = |e: PyErr| support.problem(py, "could not add a module the update imported", &e);
    let staged: Vec<(String, Bound<'_, PyAny>)> = call(py, support, imports, "staged", ())?.extract().map_err(fail)?;
    let sys_modules = py
        .import("sys")
        .and_then(|s| s.getattr("modules"))
        .and_then(|m| Ok(m.cast_into::<PyDict>()?))
        .map_err(fail)?;
    for (name, module) in staged {
        if sys_modules.contains(&name).map_err(fail)? {
            continue; // imported by the program since: that one is kept
        }
        journal
            .set_item(&sys_modules, PyString::new(py, &name).as_any(), &module)
            .map_err(fail)?;
        if let Some((parent, child)) = name.rsplit_once('.') {
            if let Some(parent) = sys_modules.get_item(parent).map_err(fail)? {
                journal.set_attr(&parent, child, &module).map_err(fail)?;
            }
        }
    }
    Ok(())
}

fn call<'py>(
    py: Python<'py>,
    support: &Support<'py>,
    imports: &Imports,
    method: &str,
    args: impl pyo3::call::PyCallArgs<'py>,
) -> Result<Bound<'py, PyAny>, Problem> {
    let Some(imports) = &imports.0 else {
        return Ok(py.None().into_bound(py));
    };
    imports
        .bind(py)
        .call_method1(method, args)
        .map_err(|e| support.problem(py, &format!("could not stage the update's imports ({method})"), &e))
}
