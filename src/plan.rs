//! A [`Plan`] is a spec resolved against the live program: every module
//! found, every new source read and compiled, every name in the spec bound
//! to an object. Building one changes nothing in the program; it is what
//! `pyreload check` validates and what the commit executes.

use std::collections::BTreeSet;
use std::time::Duration;

use pyo3::prelude::*;
use pyo3::types::{PyModule, PySet};

use crate::diagnostic::Location;

/// One module to reload.
pub struct ModulePlan {
    pub name: String,
    pub module: Py<PyModule>,
    /// Path of the new source.
    pub source: String,
    /// The new source, compiled.
    pub code: Py<PyAny>,
    pub keep: BTreeSet<String>,
    pub reset: BTreeSet<String>,
}

/// `[check] after`, compiled.
pub struct AfterCheck {
    pub text: String,
    pub location: Location,
    pub code: Py<PyAny>,
}

/// Everything the engine needs to wait for the safe point and commit.
pub struct Plan {
    pub to: String,
    pub modules: Vec<ModulePlan>,
    /// The dotted paths of `[safe_point] inactive`, for reports.
    pub inactive: Vec<String>,
    /// `id()` of each inactive function's code object.
    pub inactive_code_ids: Py<PySet>,
    pub after: Option<AfterCheck>,
    pub timeout: Duration,
}
