//! A [`Plan`] is a spec resolved against the live program: every module
//! found, every new source read and compiled, every name in the spec bound
//! to an object. Building one changes nothing in the program; it is what
//! `pyreload check` validates and what the commit executes.

use std::collections::BTreeSet;
use std::time::Duration;

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyModule, PySet, PyString};

use crate::diagnostic::Location;

/// One module to reload.
pub struct ModulePlan {
    pub name: String,
    pub module: Py<PyModule>,
    /// Path of the new source.
    pub source: String,
    /// The new source, as read.
    pub text: String,
    /// The new source, compiled.
    pub code: Py<PyAny>,
    pub keep: BTreeSet<String>,
    pub reset: BTreeSet<String>,
    /// Globals a `[[transform]]` converts: the merge leaves them as they
    /// are, so their transformer gets the running value.
    pub transformed: BTreeSet<String>,
    /// New in this version: `module` is a fresh module object, added to
    /// `sys.modules` by the commit.
    pub new: bool,
}

/// What a `[[transform]]` converts.
#[derive(Clone)]
pub enum TransformTarget {
    Class,
    /// A module global: the module's name and the global's.
    Global {
        module: String,
        name: String,
    },
}

/// One `[[transform]]`, checked against the program.
pub struct TransformPlan {
    pub target: TransformTarget,
    /// Dotted path of the class or global.
    pub path: String,
    pub function: Option<String>,
    /// (attribute, compiled expression, globals to evaluate it in)
    pub defaults: Vec<(String, Py<PyAny>, Py<PyAny>)>,
    pub mode: crate::spec::Mode,
    pub reverse: Option<String>,
    /// The `[[transform]]` table, for errors (none for a rollback's reverse).
    pub location: Option<Location>,
}

/// A Python expression from the spec (`condition`, `after`), compiled.
pub struct Expression {
    pub text: String,
    pub location: Location,
    pub code: Py<PyAny>,
}

/// Everything the engine needs to wait for the safe point and commit.
pub struct Plan {
    pub to: String,
    pub modules: Vec<ModulePlan>,
    /// Every function that must be inactive (those the update changes or
    /// removes, plus `inactive`, minus `allow_active`), as dotted paths.
    pub inactive: Vec<String>,
    /// `id()` of each of their code objects.
    pub inactive_code_ids: Py<PySet>,
    /// Those of their code objects that are generators or coroutines, which
    /// can also be suspended off every thread's stack.
    pub generator_codes: Py<PyList>,
    pub condition: Option<Expression>,
    pub update_point: Option<String>,
    pub after: Option<Expression>,
    pub transforms: Vec<TransformPlan>,
    /// How long to wait for the safe point.
    pub timeout: Duration,
    /// How long the update's own code may run after the wait (see
    /// `engine::watchdog`).
    pub commit_timeout: Duration,
    /// How long the stopped world may let threads that block the safe
    /// point run on alone (`[safe_point] run_alone_us`; zero: never).
    pub run_alone: Duration,
    /// The modules only this update needs, kept out of `sys.modules` until
    /// it commits (see `engine::imports`).
    pub imports: Imports,
    /// Copies of the reloaded modules' names in other modules, and star
    /// imports of them (README, "What a reload keeps").
    pub copies: Vec<Copy>,
    pub stars: Vec<StarImport>,
}

/// A support.py `UpdateImports`: the modules an update imported that the
/// program had not, staged. Dropping it ends the update's hold on them.
#[derive(Default)]
pub struct Imports(pub Option<Py<PyAny>>);

impl Drop for Imports {
    fn drop(&mut self) {
        if let Some(imports) = self.0.take() {
            Python::attach(|py| {
                let _ = imports.call_method0(py, "close");
            });
        }
    }
}

/// A name another module copied from a reloaded one, with
/// `from m import NAME [as ALIAS]` or `from m import *`, and still holding
/// the very object `m.NAME` holds. Found in prepare (engine/copies.rs); the
/// commit re-points it when the update gives `m.NAME` a new object.
pub struct Copy {
    /// The importing module's name.
    pub importer: String,
    /// Its globals.
    pub globals: Py<PyDict>,
    /// The name in the importer.
    pub alias: String,
    /// Index of the reloaded module in `Plan::modules`.
    pub module: usize,
    /// The name in the reloaded module.
    pub name: String,
    /// `alias` and `name` as the `str` objects the program's dicts hold
    /// (their hashes cached): the commit looks each copy up in the stopped
    /// world, where making a new `str` per lookup cost most of the time.
    pub alias_key: Py<PyString>,
    pub name_key: Py<PyString>,
}

/// A module that did `from m import *` on a reloaded module: it gains the
/// public names the update adds to `m`.
pub struct StarImport {
    pub importer: String,
    pub globals: Py<PyDict>,
    /// Index of the reloaded module in `Plan::modules`.
    pub module: usize,
}
