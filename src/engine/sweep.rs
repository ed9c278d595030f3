//! The lazy migration's sweep: after the pause, with the program running,
//! every instance not converted on use yet is converted here, in batches.
//!
//! support.py's `LazyMigration` owns the hooks and the bookkeeping the
//! program's threads share (`done`, `converting`, the lock). Converting a
//! million instances through its Python `ensure` cost several microseconds
//! each (a lock per instance, a weak reference with a callback per
//! instance, two method calls); this loop does the same conversion from
//! Rust as the eager loop does (eager.rs): the migration's lock taken once
//! per batch, one dict copy for the state to restore on failure, one call
//! of the transformer.
//!
//! An instance the sweep converted is recorded by id (shifted) in the migration's
//! `swept` set instead of with a weak reference: the sweep's queue holds
//! every such instance, so no id is reused while the hooks look it up.
//! Should the hooks stay (some instance failed), [`Sweep::end`] gives every
//! swept instance the usual weak-reference mark before the queue goes.

use std::collections::HashMap;

use pyo3::exceptions::PyException;
use pyo3::ffi;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyInt, PyList, PySet, PyTuple};

use super::eager::instance_dict;
use super::support::Support;

/// The instances a sweep converts, and where it got to.
pub struct Sweep<'py> {
    migration: Bound<'py, PyAny>,
    queue: Bound<'py, PyList>,
    next: usize,
    done: Bound<'py, PyDict>,
    converting: Bound<'py, PyDict>,
    swept: Bound<'py, PySet>,
    lock: Bound<'py, PyAny>,
    function: Option<Bound<'py, PyAny>>,
    defaults: Bound<'py, PyList>,
    /// Slot names per exact type, as the eager loop keeps them.
    slots: HashMap<*mut ffi::PyTypeObject, Bound<'py, PyTuple>>,
    /// How many this sweep converted.
    pub converted: usize,
}

/// The id the migration keys its tables by, as `id(obj)` gives it.
fn id_of<'py>(obj: &Bound<'py, PyAny>) -> Bound<'py, PyInt> {
    // SAFETY: PyLong_FromVoidPtr is what id() returns; a new reference.
    unsafe {
        Bound::from_owned_ptr(obj.py(), ffi::PyLong_FromVoidPtr(obj.as_ptr().cast())).cast_into_unchecked::<PyInt>()
    }
}

/// How `swept` records an instance: `id(obj) >> 4` (see support.py).
fn swept_key<'py>(obj: &Bound<'py, PyAny>) -> Bound<'py, PyInt> {
    // SAFETY: a new reference to an int, as above.
    unsafe {
        Bound::from_owned_ptr(obj.py(), ffi::PyLong_FromSize_t((obj.as_ptr() as usize) >> 4))
            .cast_into_unchecked::<PyInt>()
    }
}

impl<'py> Sweep<'py> {
    /// The instances of the migrated class not converted yet: one walk of
    /// the collector's objects, then the migration's tables.
    pub fn start(support: &Support<'py>, migration: &Bound<'py, PyAny>) -> PyResult<Sweep<'py>> {
        let py = migration.py();
        let class = migration.getattr(intern!(py, "cls"))?;
        let function = migration.getattr(intern!(py, "fn"))?;
        let sweep = Sweep {
            migration: migration.clone(),
            queue: PyList::empty(py),
            next: 0,
            done: migration.getattr(intern!(py, "done"))?.cast_into::<PyDict>()?,
            converting: migration.getattr(intern!(py, "converting"))?.cast_into::<PyDict>()?,
            swept: migration.getattr(intern!(py, "swept"))?.cast_into::<PySet>()?,
            lock: migration.getattr(intern!(py, "lock"))?,
            function: (!function.is_none()).then_some(function),
            defaults: migration.getattr(intern!(py, "defaults"))?.cast_into::<PyList>()?,
            slots: HashMap::new(),
            converted: 0,
        };
        let all = support.instances_of(&class)?;
        for obj in all.iter() {
            if !sweep.is_done(&obj, &id_of(&obj))? {
                sweep.queue.append(obj)?;
            }
        }
        Ok(sweep)
    }

    /// How many instances the sweep found to convert.
    pub fn pending(&self) -> usize {
        self.queue.len()
    }

    /// Converted already: on use (a weak-reference mark) or by this sweep.
    fn is_done(&self, obj: &Bound<'py, PyAny>, id: &Bound<'py, PyInt>) -> PyResult<bool> {
        if self.swept.contains(swept_key(obj))? {
            return Ok(true);
        }
        match self.done.get_item(id)? {
            Some(reference) => Ok(reference.call0()?.is(obj)),
            None => Ok(false),
        }
    }

    /// Converts up to `batch` instances, holding the migration's lock for
    /// the batch; returns how many are left. An instance whose transformer
    /// raises keeps its old state and is reported in `failures`.
    pub fn batch(&mut self, support: &Support<'py>, batch: usize) -> PyResult<usize> {
        let py = self.migration.py();
        self.lock.call_method0(intern!(py, "acquire"))?;
        let result = self.convert_some(support, batch);
        self.lock.call_method0(intern!(py, "release"))?;
        result?;
        Ok(self.queue.len() - self.next)
    }

    fn convert_some(&mut self, support: &Support<'py>, batch: usize) -> PyResult<()> {
        let py = self.migration.py();
        // SAFETY: PyThread_get_thread_ident has no preconditions.
        let me = unsafe { ffi::PyThread_get_thread_ident() };
        let end = (self.next + batch).min(self.queue.len());
        while self.next < end {
            let obj = self.queue.get_item(self.next)?;
            self.next += 1;
            let id = id_of(&obj);
            // Converted on use meanwhile, or being converted by a
            // transformer of ours that touched another instance.
            if self.is_done(&obj, &id)? || self.converting.contains(&id)? {
                continue;
            }
            self.converting.set_item(&id, me)?;
            let converted = self.convert_one(support, &obj);
            self.converting.del_item(&id)?;
            match converted {
                Ok(()) => {
                    self.swept.add(swept_key(&obj))?;
                    self.converted += 1;
                }
                Err(e) if e.is_instance_of::<PyException>(py) => self.failed(&obj, &e)?,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Saves the state, runs `defaults` and the transformer; on error puts
    /// the state back before returning it.
    fn convert_one(&mut self, support: &Support<'py>, obj: &Bound<'py, PyAny>) -> PyResult<()> {
        let py = obj.py();
        let ty = obj.get_type();
        let slots = match self.slots.get(&ty.as_type_ptr()) {
            Some(names) => names.clone(),
            None => {
                let names = support.slot_names(&ty)?;
                self.slots.insert(ty.as_type_ptr(), names.clone());
                names
            }
        };
        let saved: Result<Bound<'py, PyDict>, Bound<'py, PyAny>> = match (slots.is_empty(), instance_dict(obj)?) {
            (true, Some(dict)) => Ok(dict.copy()?),
            _ => Err(support.save_state(obj, &slots)?),
        };
        let run = || -> PyResult<()> {
            if !self.defaults.is_empty() {
                support.apply_defaults(obj, &self.defaults)?;
            }
            if let Some(function) = &self.function {
                let result = function.call1((obj,))?;
                if !result.is_none() {
                    support.apply_result(obj, &result)?;
                }
            }
            Ok(())
        };
        let outcome = run();
        if outcome.is_err() {
            match saved {
                Ok(state) => {
                    if let Some(current) = instance_dict(obj)? {
                        current.clear();
                        current.update(state.as_mapping())?;
                    }
                }
                Err(state) => support.restore_states(&PyList::new(py, [state])?)?,
            }
        }
        outcome
    }

    /// Records a failed instance as `LazyMigration.ensure` does.
    fn failed(&self, obj: &Bound<'py, PyAny>, e: &PyErr) -> PyResult<()> {
        let py = obj.py();
        let kind = e.get_type(py).name()?.to_string();
        let text = format!("{kind}: {}", e.value(py));
        self.migration
            .getattr(intern!(py, "failures"))?
            .call_method1(intern!(py, "append"), (&text,))?;
        let label: String = self.migration.getattr(intern!(py, "label"))?.extract()?;
        let class = obj.get_type().qualname()?.to_string();
        let line = format!(
            "pyreload: lazy conversion of a {class} for update `{label}` failed, the object keeps its old state: {text}\n"
        );
        py.import(intern!(py, "sys"))?
            .getattr(intern!(py, "stderr"))?
            .call_method1(intern!(py, "write"), (line,))?;
        Ok(())
    }

    /// Ends the sweep: adds its count to the migration's, and, if the hooks
    /// are to stay (`keep_hooks`), marks every swept instance the usual way
    /// so that the ids in `swept` need the queue no longer.
    pub fn end(&self, keep_hooks: bool) -> PyResult<()> {
        let py = self.migration.py();
        let by_sweep: usize = self.migration.getattr(intern!(py, "by_sweep"))?.extract()?;
        self.migration
            .setattr(intern!(py, "by_sweep"), by_sweep + self.converted)?;
        if keep_hooks {
            let mark = self.migration.getattr(intern!(py, "mark"))?;
            for obj in self.queue.iter() {
                if self.swept.contains(swept_key(&obj))? {
                    mark.call1(PyTuple::new(py, [obj])?)?;
                }
            }
            self.swept.clear();
        }
        // Otherwise the hooks come off next and `swept` is not read again;
        // it is cleared then (see `transform::sweep`), not before.
        Ok(())
    }
}
