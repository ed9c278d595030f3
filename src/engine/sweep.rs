//! The lazy migration's sweep: after the pause, with the program running,
//! every instance not converted on use yet is converted here, in batches.
//!
//! support.py's `LazyMigration` owns the conversion on use and the lock
//! the program's threads share; the marks they all read are lazy.rs's
//! [`Marks`]. Converting a million instances through its Python `ensure`
//! cost several microseconds each (a lock per instance, a weak reference
//! with a callback per instance, two method calls); this loop does the same
//! conversion from Rust as the eager loop does (eager.rs): the migration's
//! lock taken once per batch, one dict copy for the state to restore on
//! failure, one call of the transformer. The transformer's own use of the
//! instance goes through the C hooks' fast path (lazy.rs).
//!
//! The walk that finds the instances marks each one not converted yet
//! `Pending`, and the marks are then complete: the queue keeps every such
//! instance alive, so no address is reused while it is a key. Should the
//! hooks stay (some instance failed), [`Sweep::end`] gives every swept
//! instance the usual weak reference before the queue goes.

use std::collections::HashMap;

use pyo3::exceptions::PyException;
use pyo3::ffi;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyTuple};

use super::eager::instance_dict;
use super::lazy::LazyTable;
use super::support::Support;

/// The instances a sweep converts, and where it got to.
pub struct Sweep<'py> {
    migration: Bound<'py, PyAny>,
    table: Bound<'py, LazyTable>,
    queue: Bound<'py, PyList>,
    next: usize,
    lock: Bound<'py, PyAny>,
    function: Option<Bound<'py, PyAny>>,
    defaults: Bound<'py, PyList>,
    /// Slot names per exact type, as the eager loop keeps them.
    slots: HashMap<*mut ffi::PyTypeObject, Bound<'py, PyTuple>>,
    /// How many the walk found to convert.
    pending: usize,
    /// How many this sweep converted.
    pub converted: usize,
}

impl<'py> Sweep<'py> {
    /// The instances of the migrated class not converted yet: one walk of
    /// the collector's objects, then the marks.
    pub fn start(support: &Support<'py>, migration: &Bound<'py, PyAny>) -> PyResult<Sweep<'py>> {
        let py = migration.py();
        let class = migration.getattr(intern!(py, "cls"))?;
        let function = migration.getattr(intern!(py, "fn"))?;
        let table = migration.getattr(intern!(py, "table"))?.cast_into::<LazyTable>()?;
        let queue = support.instances_of(&class)?;
        // No Python code runs from here to `completed`, so no thread of the
        // program sees the marks half made.
        let mut pending = 0;
        {
            let mut marks = table.get().marks();
            for obj in queue.iter() {
                pending += usize::from(marks.found(obj.as_ptr() as usize));
            }
            marks.completed();
        }
        Ok(Sweep {
            migration: migration.clone(),
            table,
            queue,
            next: 0,
            lock: migration.getattr(intern!(py, "lock"))?,
            function: (!function.is_none()).then_some(function),
            defaults: migration.getattr(intern!(py, "defaults"))?.cast_into::<PyList>()?,
            slots: HashMap::new(),
            pending,
            converted: 0,
        })
    }

    /// How many instances the sweep found to convert.
    pub fn pending(&self) -> usize {
        self.pending
    }

    /// Converts up to `batch` instances, holding the migration's lock for
    /// the batch; returns how many are left. An instance whose transformer
    /// raises keeps its old state and is reported in `failures`.
    // Not inlined: bench/migrate.py counts its instructions by name under callgrind.
    #[inline(never)]
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
            // SAFETY: `next` < len; the list is ours and not resized.
            let obj = unsafe { self.queue.get_item_unchecked(self.next) };
            self.next += 1;
            let addr = obj.as_ptr() as usize;
            // Converted on use meanwhile, created since, or being converted
            // by a transformer of ours that touched another instance.
            if !self.table.get().marks().claim(addr, me) {
                continue;
            }
            let converted = self.convert_one(support, &obj);
            self.table.get().marks().settle(addr, converted.is_ok());
            match converted {
                Ok(()) => self.converted += 1,
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
    /// are to stay (`keep_hooks`), gives every swept instance the weak
    /// reference that forgets its mark when it dies, then makes the marks
    /// incomplete again (see lazy.rs), since the queue goes.
    pub fn end(&self, keep_hooks: bool) -> PyResult<()> {
        let py = self.migration.py();
        let by_sweep: usize = self.migration.getattr(intern!(py, "by_sweep"))?.extract()?;
        self.migration
            .setattr(intern!(py, "by_sweep"), by_sweep + self.converted)?;
        if keep_hooks {
            let watch = self.migration.getattr(intern!(py, "watch"))?;
            for obj in self.queue.iter() {
                let adopted = self.table.get().marks().adopt(obj.as_ptr() as usize);
                if adopted {
                    watch.call1((obj,))?;
                }
            }
            self.table.get().marks().incomplete();
        }
        // Otherwise the hooks come off next and the marks are not read
        // again; they are cleared then (see `transform::sweep`), not before.
        Ok(())
    }
}
