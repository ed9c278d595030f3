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

use crate::process::per_process::PerProcess;

use crate::process::wire::Retained;

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

/// Per process: `summary` locks it without the GIL (for `status`), so a
/// child forked meanwhile must not inherit that lock. [`after_fork_in_child`]
/// copies the entries when it can.
static TRACKED: PerProcess<Mutex<Tracked>> = PerProcess::new(|| {
    Mutex::new(Tracked {
        next: 0,
        total: 0,
        alive: BTreeMap::new(),
    })
});

fn tracked() -> MutexGuard<'static, Tracked> {
    TRACKED.get().lock().unwrap_or_else(|p| p.into_inner())
}

/// In a freshly forked child (GIL held, one thread): this process's own
/// tracking, with the parent's entries if their lock was free at the fork
/// (otherwise the child starts counting from zero). The weak references'
/// callbacks find the child's table, since they look it up when they run.
pub fn after_fork_in_child(py: Python<'_>) {
    TRACKED.renew_with(|inherited| {
        let copied = inherited.and_then(|m| m.try_lock().ok()).map(|t| Tracked {
            next: t.next,
            total: t.total,
            alive: t
                .alive
                .iter()
                .map(|(id, e)| {
                    (
                        *id,
                        Entry {
                            kind: e.kind,
                            label: e.label.clone(),
                            _reference: e._reference.clone_ref(py),
                        },
                    )
                })
                .collect(),
        });
        Mutex::new(copied.unwrap_or(Tracked {
            next: 0,
            total: 0,
            alive: BTreeMap::new(),
        }))
    });
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
