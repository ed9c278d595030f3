//! The eager migration loop: every live instance of a class, converted in
//! the commit window, each one's state journaled first.
//!
//! This loop is the whole cost per instance of an eager migration, and the
//! pause grows with it. So it runs here rather than as Python bytecode: for
//! the common instance (a `__dict__`, no slots, no `defaults`) it costs one
//! C-level dict copy for the journal and one vectorcall of the transformer.
//! The rare parts (slots, defaults, a transformer that returns a new state)
//! go through `support.py`.

use std::collections::HashMap;

use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyTuple};

use super::support::Support;

/// Converts every instance of `objs`: saves its state into `saved` (see
/// `Journal::instance_states`) before anything runs on it, sets the missing
/// `defaults`, then calls `function`. On error, `saved` ends with the state
/// of the instance that failed, so that `saved.len()` is its 1-based
/// position and the journal can restore every instance touched.
// Not inlined: bench/migrate.py counts its instructions by name under callgrind.
#[inline(never)]
pub fn convert_all<'py>(
    support: &Support<'py>,
    saved: &Bound<'py, PyList>,
    objs: &Bound<'py, PyList>,
    defaults: &Bound<'py, PyList>,
    function: Option<&Bound<'py, PyAny>>,
) -> PyResult<()> {
    // Slot names per exact type: the class and its subclasses, a handful.
    let mut slots: HashMap<*mut ffi::PyTypeObject, Bound<'py, PyTuple>> = HashMap::new();
    let has_defaults = !defaults.is_empty();
    for obj in objs.iter() {
        let ty = obj.get_type();
        let names = match slots.get(&ty.as_type_ptr()) {
            Some(names) => names,
            None => {
                let names = support.slot_names(&ty)?;
                slots.entry(ty.as_type_ptr()).or_insert(names)
            }
        };
        let state = if names.is_empty() {
            match instance_dict(&obj)? {
                Some(dict) => dict.copy()?.into_any(),
                None => support.save_state(&obj, names)?,
            }
        } else {
            support.save_state(&obj, names)?
        };
        saved.append(state)?;
        if has_defaults {
            support.apply_defaults(&obj, defaults)?;
        }
        if let Some(function) = function {
            let result = function.call1((&obj,))?;
            if !result.is_none() {
                support.apply_result(&obj, &result)?;
            }
        }
    }
    Ok(())
}

/// The instance's own `__dict__`, as `object.__getattribute__(obj,
/// "__dict__")` gives it (no `__getattribute__` of the class runs, so a
/// lazy migration's hook is not triggered), or None if it has none.
pub(crate) fn instance_dict<'py>(obj: &Bound<'py, PyAny>) -> PyResult<Option<Bound<'py, PyDict>>> {
    let py = obj.py();
    // SAFETY: `obj` is a valid object and we hold the GIL (a `Bound`).
    // PyObject_GenericGetDict returns a new reference, or NULL with an
    // exception set (AttributeError when the type has no instance dict).
    let dict =
        unsafe { Bound::from_owned_ptr_or_err(py, ffi::PyObject_GenericGetDict(obj.as_ptr(), std::ptr::null_mut())) };
    match dict {
        Ok(dict) => Ok(dict.cast_into::<PyDict>().ok()),
        Err(e) if e.is_instance_of::<pyo3::exceptions::PyAttributeError>(py) => Ok(None),
        Err(e) => Err(e),
    }
}
