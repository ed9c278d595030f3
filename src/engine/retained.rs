//! Objects of earlier versions that should be gone.
//!
//! An update runs each new module body into a staging module, then merges
//! the staged functions and classes into the live ones. Afterwards the
//! staging module and the staged classes are garbage: nothing should refer
//! to them. If something does (a new object that was not relinked, a
//! thread holding a staged closure), every update leaks a copy of the new
//! version, and a program updated a thousand times grows a thousand
//! copies.
//!
//! So each committed update tracks those objects with weak references. A
//! reference's callback forgets the object when it is freed, so `status`
//! can say how many are still alive without the GIL. Classes always sit in
//! reference cycles, so they go at the collector's next run, not at once:
//! `pyreload status --collect` runs a collection first.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};

use pyo3::prelude::*;
use pyo3::types::{PyCFunction, PyWeakrefReference};

use crate::control::protocol::Retained;

/// What kind of object was tracked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Module,
    Class,
}

struct Entry {
    kind: Kind,
    label: String,
    /// Keeps the weak reference (and so its callback) alive; never read.
    _reference: Py<PyAny>,
}

struct Tracked {
    next: u64,
    total: usize,
    alive: BTreeMap<u64, Entry>,
}

static TRACKED: Mutex<Tracked> = Mutex::new(Tracked {
    next: 0,
    total: 0,
    alive: BTreeMap::new(),
});

fn tracked() -> MutexGuard<'static, Tracked> {
    TRACKED.lock().unwrap_or_else(|p| p.into_inner())
}

/// Starts watching `obj`, which `update` made garbage.
pub fn track(obj: &Bound<'_, PyAny>, kind: Kind, update: &str, name: &str) -> PyResult<()> {
    let py = obj.py();
    let id = {
        let mut t = tracked();
        t.next += 1;
        t.next
    };
    let forget = PyCFunction::new_closure(py, None, None, move |_args, _kwargs| -> PyResult<()> {
        // Dropping the entry drops the (now dead) weak reference: the GIL
        // is held here, as in every weakref callback.
        let entry = tracked().alive.remove(&id);
        drop(entry);
        Ok(())
    })?;
    let reference = PyWeakrefReference::new_with(obj, forget)?;
    let kind_name = match kind {
        Kind::Module => "module",
        Kind::Class => "class",
    };
    let mut t = tracked();
    t.total += 1;
    t.alive.insert(
        id,
        Entry {
            kind,
            label: format!("{update}: {kind_name} {name}"),
            _reference: reference.into_any().unbind(),
        },
    );
    Ok(())
}

/// How many tracked objects are alive now. Needs no GIL.
pub fn summary() -> Retained {
    let t = tracked();
    let count = |kind| t.alive.values().filter(|e| e.kind == kind).count();
    Retained {
        modules: count(Kind::Module),
        classes: count(Kind::Class),
        tracked: t.total,
        alive: t.alive.values().take(20).map(|e| e.label.clone()).collect(),
    }
}

/// Runs a full collection, so that what is still tracked afterwards is
/// really kept alive by a reference.
pub fn collect(py: Python<'_>) -> PyResult<()> {
    py.import("gc")?.call_method0("collect").map(drop)
}
