//! Typed access to `support.py`, the engine's few helpers written in Python.

use std::ffi::CString;

use pyo3::call::PyCallArgs;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyList, PyTuple, PyType};

use crate::diagnostic::{Location, Problem};
use crate::report::Changes;

const SOURCE: &str = include_str!("support.py");

static NAMESPACE: PyOnceLock<Py<PyDict>> = PyOnceLock::new();

/// support.py compiled by build.rs: the bytecode magic number of the build
/// interpreter, then the marshalled module code (empty if that failed).
const COMPILED: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/support.marshal"));

/// The code object of support.py, from [`COMPILED`], if it was made by an
/// interpreter with this one's bytecode. Reads the magic number and
/// `marshal` from modules every interpreter has loaded at start-up, so the
/// program's `sys.modules` does not change.
fn precompiled(py: Python<'_>) -> PyResult<Option<Bound<'_, PyAny>>> {
    if COMPILED.len() <= 4 {
        return Ok(None);
    }
    let modules = py.import("sys")?.getattr("modules")?;
    let (Ok(external), Ok(marshal)) = (
        modules.get_item("_frozen_importlib_external"),
        modules.get_item("marshal"),
    ) else {
        return Ok(None);
    };
    let magic: Vec<u8> = external.getattr("MAGIC_NUMBER")?.extract()?;
    if magic.as_slice() != &COMPILED[..4] {
        return Ok(None);
    }
    let body = pyo3::types::PyBytes::new(py, &COMPILED[4..]);
    Ok(Some(marshal.call_method1("loads", (body,))?))
}

/// The helpers, loaded once per process into a private namespace.
pub struct Support<'py> {
    ns: Bound<'py, PyDict>,
}

impl<'py> Support<'py> {
    pub fn load(py: Python<'py>) -> PyResult<Support<'py>> {
        let ns = NAMESPACE.get_or_try_init(py, || -> PyResult<Py<PyDict>> {
            let ns = PyDict::new(py);
            ns.set_item("__name__", "pyreload._support")?;
            ns.set_item("__builtins__", py.import("builtins")?)?;
            match precompiled(py)? {
                Some(code) => {
                    py.import("builtins")?.getattr("exec")?.call1((code, &ns))?;
                }
                None => {
                    let code = CString::new(SOURCE).expect("support.py has no NUL bytes");
                    py.run(&code, Some(&ns), None)?;
                }
            }
            Ok(ns.unbind())
        })?;
        Ok(Support {
            ns: ns.bind(py).clone(),
        })
    }

    fn call(&self, name: &str, args: impl PyCallArgs<'py>) -> PyResult<Bound<'py, PyAny>> {
        self.ns
            .get_item(name)?
            .expect("support.py defines every helper the engine calls")
            .call1(args)
    }

    pub fn same_code(&self, a: &Bound<'py, PyAny>, b: &Bound<'py, PyAny>) -> PyResult<bool> {
        self.call("same_code", (a, b))?.is_truthy()
    }

    /// Whether `b` is `a` with its lines moved and nothing else changed
    /// (support.py's `moved_code`).
    pub fn moved_code(&self, a: &Bound<'py, PyAny>, b: &Bound<'py, PyAny>) -> PyResult<bool> {
        self.call("moved_code", (a, b))?.is_truthy()
    }

    pub fn is_constant(&self, v: &Bound<'py, PyAny>) -> PyResult<bool> {
        self.call("is_constant", (v,))?.is_truthy()
    }

    pub fn is_code_like(&self, v: &Bound<'py, PyAny>) -> PyResult<bool> {
        self.call("is_code_like", (v,))?.is_truthy()
    }

    /// `(copies, stars)` as support.py's `find_copies` returns them.
    pub fn find_copies(&self, updated: Vec<(String, Option<Py<PyAny>>)>) -> PyResult<Bound<'py, PyAny>> {
        self.call("find_copies", (updated,))
    }

    /// (value, member) pairs as support.py's `flag_pseudo_members` returns them.
    pub fn flag_pseudo_members(
        &self,
        old_values: &Bound<'py, PyAny>,
        new_values: &Bound<'py, PyDict>,
    ) -> PyResult<Vec<(Bound<'py, PyAny>, Bound<'py, PyAny>)>> {
        self.call("flag_pseudo_members", (old_values, new_values))?.extract()
    }

    pub fn staging_builtins(&self, staged: &Bound<'py, PyDict>) -> PyResult<Bound<'py, PyAny>> {
        self.call("staging_builtins", (staged,))
    }

    pub fn module_source(&self, module: &Bound<'py, PyAny>) -> PyResult<Option<String>> {
        self.call("module_source", (module,))?.extract()
    }

    pub fn import_named_modules(&self, expression: &str) -> PyResult<()> {
        self.call("import_named_modules", (expression,)).map(drop)
    }

    /// Imports the module of a dotted path (a transformer's), top level
    /// included.
    pub fn import_module_of(&self, path: &str) -> PyResult<()> {
        self.call("import_module_of", (path,)).map(drop)
    }

    pub fn is_generator_code(&self, code: &Bound<'py, PyAny>) -> PyResult<bool> {
        self.call("is_generator_code", (code,))?.is_truthy()
    }

    /// Generators and coroutines suspended in one of `codes`.
    pub fn suspended(&self, codes: &Bound<'py, PyAny>) -> PyResult<Vec<Suspended>> {
        self.find_suspended(codes, false)
    }

    /// [`Support::suspended`] with the program running, before the stopped
    /// world's check: the collector's two youngest generations are
    /// collected first, so that the check, which looks through them, sees
    /// only objects made since (support.py, `_generators_of`).
    pub fn suspended_before_the_pause(&self, codes: &Bound<'py, PyAny>) -> PyResult<Vec<Suspended>> {
        self.find_suspended(codes, true)
    }

    fn find_suspended(&self, codes: &Bound<'py, PyAny>, settle: bool) -> PyResult<Vec<Suspended>> {
        let found: Vec<(String, String, String, u32, Option<String>)> =
            self.call("suspended", (codes, settle))?.extract()?;
        Ok(found
            .into_iter()
            .map(|(kind, function, file, line, task)| Suspended {
                kind,
                function,
                file,
                line,
                task,
            })
            .collect())
    }

    /// Live functions of `module` that `new_code` changes or removes.
    pub fn changed_functions(
        &self,
        module: &Bound<'py, PyAny>,
        new_code: &Bound<'py, PyAny>,
    ) -> PyResult<Vec<(String, Bound<'py, PyAny>)>> {
        self.call("changed_functions", (module, new_code))?.extract()
    }

    /// What reloading `module` from `new_code` will do to its functions and
    /// classes, without running the new code.
    pub fn predict(&self, module: &Bound<'py, PyAny>, new_code: &Bound<'py, PyAny>) -> PyResult<(Changes, Changes)> {
        let (functions, classes): (Bound<'py, PyDict>, Bound<'py, PyDict>) =
            self.call("predict", (module, new_code))?.extract()?;
        Ok((changes(&functions)?, changes(&classes)?))
    }

    /// The modules a module body imports from.
    pub fn imported_modules(&self, code: &Bound<'py, PyAny>, package: &str) -> PyResult<Vec<String>> {
        self.call("imported_modules", (code, package))?.extract()
    }

    pub fn modules_for_files(&self, paths: Vec<String>) -> PyResult<Vec<String>> {
        self.call("modules_for_files", (paths,))?.extract()
    }

    pub fn stored_names(&self, code: &Bound<'py, PyAny>) -> PyResult<Vec<String>> {
        self.call("stored_names", (code,))?.extract()
    }

    /// For `check`: the globals a reload from `code` will update as
    /// literal constants.
    pub fn literal_updates(&self, module: &Bound<'py, PyAny>, code: &Bound<'py, PyAny>) -> PyResult<Vec<String>> {
        self.call("literal_updates", (module, code))?.extract()
    }

    /// Why `path` cannot serve as a transformer, if it cannot.
    pub fn check_transformer(&self, path: &str, new_codes: &Bound<'py, PyDict>) -> PyResult<Option<String>> {
        self.call("check_transformer", (path, new_codes))?.extract()
    }

    pub fn resolve(&self, path: &str) -> PyResult<Bound<'py, PyAny>> {
        self.call("resolve", (path,))
    }

    pub fn instances_of(&self, class: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyList>> {
        Ok(self.call("instances_of", (class,))?.cast_into::<PyList>()?)
    }

    /// The slot names of `class` and its bases (see `eager.rs`).
    pub fn slot_names(&self, class: &Bound<'py, PyType>) -> PyResult<Bound<'py, PyTuple>> {
        Ok(self.call("slot_names", (class,))?.cast_into::<PyTuple>()?)
    }

    /// An instance's state as the journal keeps it, read slot by slot.
    pub fn save_state(&self, obj: &Bound<'py, PyAny>, slot_names: &Bound<'py, PyTuple>) -> PyResult<Bound<'py, PyAny>> {
        self.call("save_state", (obj, slot_names))
    }

    /// Sets the `defaults` attributes the instance lacks.
    pub fn apply_defaults(&self, obj: &Bound<'py, PyAny>, defaults: &Bound<'py, PyList>) -> PyResult<()> {
        self.call("apply_defaults", (obj, defaults)).map(drop)
    }

    /// Applies a transformer's return value other than None: a dict of the
    /// new state, or a TypeError that says what a transformer must return.
    pub fn apply_result(&self, obj: &Bound<'py, PyAny>, result: &Bound<'py, PyAny>) -> PyResult<()> {
        self.call("apply_result", (obj, result)).map(drop)
    }

    /// A `LazyMigration` for `class` (see support.py).
    pub fn lazy_migration(
        &self,
        class: &Bound<'py, PyAny>,
        defaults: &Bound<'py, PyAny>,
        function: &Bound<'py, PyAny>,
        label: &str,
    ) -> PyResult<Bound<'py, PyAny>> {
        let table = Bound::new(class.py(), super::lazy::LazyTable::new())?;
        self.call("LazyMigration", (class, defaults, function, label, table))
    }

    /// Undoes an eager migration journaled by `Journal::instance_states`.
    pub fn restore_instance_states(&self, objs: &Bound<'py, PyList>, saved: &Bound<'py, PyList>) -> PyResult<()> {
        self.call("restore_instance_states", (objs, saved)).map(drop)
    }

    pub fn restore_states(&self, saved: &Bound<'py, PyList>) -> PyResult<()> {
        self.call("restore_states", (saved,)).map(drop)
    }

    /// The `gc` module, without adding it to the program's `sys.modules`.
    pub fn gc(&self) -> PyResult<Bound<'py, PyAny>> {
        self.call("gc_module", ())
    }

    /// A fresh `UpdateImports` (see support.py and `engine::imports`).
    pub fn update_imports(&self) -> PyResult<Bound<'py, PyAny>> {
        self.call("update_imports", ())
    }

    pub fn check_globals(&self, code: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyDict>> {
        Ok(self.call("check_globals", (code,))?.cast_into::<PyDict>()?)
    }

    /// Threads other than ours, and other than those in `exempt`,
    /// executing one of `code_ids`.
    pub fn active_frames(&self, code_ids: &Bound<'py, PyAny>, exempt: &[u64]) -> PyResult<Vec<ActiveFrame>> {
        let exempt = pyo3::types::PyFrozenSet::new(self.ns.py(), exempt)?;
        let found: Vec<(String, u64, String, String, u32, Vec<String>)> =
            self.call("active_frames", (code_ids, exempt))?.extract()?;
        Ok(found
            .into_iter()
            .map(|(thread, ident, function, file, line, stack)| ActiveFrame {
                thread,
                ident,
                function,
                file,
                line,
                stack,
            })
            .collect())
    }

    /// Thread `ident`'s kernel thread id (0 if unknown), the outermost
    /// frame there running one of `code_ids` (None if none does), and the
    /// code objects of the frames that called it: where the thread is once
    /// it has left them all.
    #[allow(clippy::type_complexity)]
    pub fn callers_of(
        &self,
        ident: u64,
        code_ids: &Bound<'py, PyAny>,
    ) -> PyResult<(i32, Bound<'py, PyAny>, Vec<Bound<'py, PyAny>>)> {
        self.call("callers_of", (ident, code_ids))?.extract()
    }

    /// Turns a Python exception into a [`Problem`] whose location is the
    /// syntax error or the innermost frame, and whose causes are the
    /// traceback.
    pub fn problem(&self, py: Python<'py>, context: &str, err: &PyErr) -> Problem {
        self.problem_in(py, context, err, None)
    }

    /// Like [`Support::problem`], but locates the error in `file` (the
    /// module being loaded) when the traceback passes through it.
    pub fn problem_in(&self, py: Python<'py>, context: &str, err: &PyErr, file: Option<&str>) -> Problem {
        let _hold = super::watchdog::HoldFire::new(py);
        let described: PyResult<DescribedException> = self
            .call("describe_exception", (err.value(py), err.traceback(py), file))
            .and_then(|d| d.extract());
        match described {
            Ok((summary, lines, where_, ran)) => {
                let mut problem = Problem::new(format!("{context}: {summary}"));
                if let Some((file, line, column)) = where_ {
                    // The text that ran, if the update compiled this file:
                    // the file on disk may have changed since.
                    let text = ran.unwrap_or_else(|| std::fs::read_to_string(&file).unwrap_or_default());
                    problem = problem.at(Location::at_line_column(&file, &text, line, column), summary.clone());
                }
                problem.causes = lines;
                problem
            }
            Err(_) => Problem::new(format!("{context}: {err}")),
        }
    }
}

fn changes(d: &Bound<'_, PyDict>) -> PyResult<Changes> {
    let get = |key: &str| -> PyResult<Bound<'_, PyAny>> {
        d.get_item(key)?
            .ok_or_else(|| pyo3::exceptions::PyKeyError::new_err(key.to_string()))
    };
    Ok(Changes {
        changed: get("changed")?.extract()?,
        added: get("added")?.extract()?,
        removed: get("removed")?.extract()?,
        unchanged: get("unchanged")?.extract()?,
    })
}

/// What `describe_exception` returns: a one-line summary, the traceback
/// lines, the (file, line, column) to point at, and that file's text as the
/// update compiled it.
type DescribedException = (String, Vec<String>, Option<(String, usize, usize)>, Option<String>);

/// A generator or coroutine suspended in a function that must be inactive.
#[derive(Debug, Clone)]
pub struct Suspended {
    pub kind: String,
    pub function: String,
    pub file: String,
    pub line: u32,
    /// The asyncio task driving it, if any.
    pub task: Option<String>,
}

/// A thread that holds the safe point back.
#[derive(Debug, Clone)]
pub struct ActiveFrame {
    pub thread: String,
    /// Its `threading.get_ident()`: the stopped world can let this one
    /// thread run on alone (see `StoppedWorld::let_run`).
    pub ident: u64,
    pub function: String,
    pub file: String,
    pub line: u32,
    pub stack: Vec<String>,
}
