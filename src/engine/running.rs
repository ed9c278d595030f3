//! For `pyreload new --running`: what each loaded module runs, against its
//! file on disk now.
//!
//! The host answers with every loaded module that has a source file (and
//! every package, so the client can find modules new to the program), and
//! for each whether its file still holds the source it runs. It sends the
//! running text of changed modules only, so the answer stays small. The
//! client drafts the spec (`crate::draft`).

use std::ffi::CString;

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyDict;

use crate::diagnostic::Problem;
use crate::process::state::{ProcessState, Running};
use crate::process::wire::{FileState, LoadedModule, LoadedProgram};

const SOURCE: &str = include_str!("running.py");

/// Why the source of a frozen module is not known.
const FROZEN: &str = "it is frozen: the interpreter runs code built into it, not its file";

/// What `module` runs (its source file is `file`), for `pyreload diff`.
pub fn of(state: &ProcessState, name: &str, module: &Bound<'_, PyAny>, file: Option<&str>) -> Running {
    let origin = module.getattr("__spec__").and_then(|s| s.getattr("origin"));
    if origin.is_ok_and(|o| o.extract::<String>().is_ok_and(|o| o == "frozen")) {
        return Running::Unknown { why: FROZEN.into() };
    }
    state.running_source(name, file)
}

static NAMESPACE: PyOnceLock<Py<PyDict>> = PyOnceLock::new();

/// (name, path as loaded, absolute path, search path, frozen)
type Found = (String, Option<String>, Option<String>, Option<Vec<String>>, bool);

/// The program's loaded modules, each compared with its file.
pub fn loaded(state: &ProcessState) -> Result<LoadedProgram, Problem> {
    let _gate = state
        .begin_update()
        .map_err(|e| Problem::new(format!("cannot read the program's modules now: {e}")))?;
    let (sys_path, found) = Python::attach(|py| -> PyResult<(Vec<String>, Vec<Found>)> {
        let ns = NAMESPACE.get_or_try_init(py, || -> PyResult<Py<PyDict>> {
            let ns = PyDict::new(py);
            ns.set_item("__builtins__", py.import("builtins")?)?;
            py.run(&CString::new(SOURCE).expect("no NUL bytes"), Some(&ns), None)?;
            Ok(ns.unbind())
        })?;
        let list = ns.bind(py).get_item("loaded_modules")?.expect("running.py defines it");
        list.call0()?.extract()
    })
    .map_err(|e| Problem::new(format!("could not list the program's modules: {e}")))?;
    // Files are read without the GIL: the program keeps running.
    let modules = found
        .into_iter()
        .map(|(name, path, absolute, search, frozen)| {
            let state = match (&path, &absolute) {
                (Some(_), _) if frozen => FileState::Frozen,
                (Some(path), Some(absolute)) => compare(state, &name, path, absolute),
                _ => FileState::Same,
            };
            LoadedModule {
                name,
                path: absolute,
                search,
                state,
            }
        })
        .collect();
    Ok(LoadedProgram { sys_path, modules })
}

fn compare(state: &ProcessState, module: &str, path: &str, absolute: &str) -> FileState {
    match state.running_source(module, Some(path)) {
        Running::Unknown { why } => FileState::Unknown { why },
        // An update that loaded the module from another file (`source =
        // ...`) left its file behind: that file is not its next version.
        Running::Known { path: loaded, .. } if !same_file(&loaded, absolute) => FileState::Unknown {
            why: format!("it runs {loaded}, which an update loaded, not its file {absolute}"),
        },
        Running::Known { text, .. } => match std::fs::read(absolute) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => FileState::Gone,
            Err(e) => FileState::Unknown {
                why: format!("its file {absolute} could not be read: {e}"),
            },
            Ok(disk) if String::from_utf8_lossy(&disk) == text => FileState::Same,
            Ok(_) => FileState::Changed { running: text },
        },
    }
}

fn same_file(a: &str, b: &str) -> bool {
    let canonical = |p: &str| std::fs::canonicalize(p).unwrap_or_else(|_| std::path::PathBuf::from(p));
    a == b || canonical(a) == canonical(b)
}
