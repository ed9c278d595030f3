//! What the merge read of the live program ahead of the pause, and a cheap
//! check in the pause that none of it changed since.
//!
//! The merge is computed while staging, with the program running
//! (merge.rs, `pair_ahead`); the stopped world only checks that it still
//! holds. Checking every read again (a dict lookup per global and class
//! attribute) would cost about what the reads did, so this module records,
//! before the merge reads an object:
//!
//! - for a dict (a module's globals, a class's own namespace, a function's
//!   `__dict__`, an enum's member table): its `ma_version_tag`. CPython 3.10
//!   to 3.13 give a dict a new tag, from one counter of the interpreter, on
//!   every change (`DICT_NEXT_VERSION`; from 3.12 the low bits hold the dict
//!   watchers' bits, which the counter steps over), so an equal tag means
//!   the dict was not changed. Classes are checked this way too: a class's
//!   attributes live in its dict, and `type.__setattr__` writes there.
//!   3.14 removed the tag (pyo3-ffi no longer has the field); this crate
//!   supports 3.10 to 3.13 (see docs), and the build fails loudly on a
//!   newer one rather than guess.
//! - for a function: the pointers it holds that the merge reads or
//!   replaces (`__code__`, defaults, closure, doc, ...) and what each closure
//!   cell holds. A function has no version to read before 3.11, and from
//!   3.11 `func_version` is reset only by some of these changes.
//! - for a class: its `__bases__` and metaclass, which are outside its dict.
//!
//! The check is then one load and compare per dict and a few per function.
//! It refuses to guess: any difference, even one that would not change the
//! merge, counts as a change, and the commit merges in the pause as it did
//! before.

use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyFunction, PyTuple, PyType};

use super::ptrmap::AddressMap;

/// A function's fields the merge reads, as pointers.
#[derive(PartialEq, Eq)]
struct FunctionFields {
    fields: [usize; 10],
    /// What each closure cell held (0: empty).
    cells: Vec<usize>,
}

/// The reads the merge made ahead of the pause. Every object is kept
/// alive, so an address stays its object's.
#[derive(Default)]
pub struct Seen {
    dicts: AddressMap<(Py<PyDict>, u64)>,
    functions: AddressMap<(Py<PyAny>, FunctionFields)>,
    classes: AddressMap<(Py<PyAny>, [usize; 2])>,
}

impl Seen {
    /// Notes a dict before it is read (the first note counts: a change
    /// between two reads is a change).
    pub fn dict(&mut self, dict: &Bound<'_, PyDict>) {
        self.dicts
            .entry(dict.as_ptr() as usize)
            .or_insert_with(|| (dict.clone().unbind(), version(dict)));
    }

    /// Notes a function or a class, with the dicts it holds; anything else
    /// is data the merge keeps or reads through a dict already noted.
    pub fn object(&mut self, obj: &Bound<'_, PyAny>) {
        let address = obj.as_ptr() as usize;
        if let Ok(f) = obj.cast::<PyFunction>() {
            if self.functions.contains_key(&address) {
                return;
            }
            let fields = function_fields(f);
            // SAFETY: `f` is a function (checked), so `func_dict` is the
            // field of that name, a dict or NULL, borrowed.
            let dict = unsafe { (*(f.as_ptr() as *mut ffi::PyFunctionObject)).func_dict };
            if !dict.is_null() {
                // SAFETY: a live dict, borrowed from the function.
                let dict = unsafe { Bound::from_borrowed_ptr(obj.py(), dict) };
                if let Ok(dict) = dict.cast::<PyDict>() {
                    self.dict(dict);
                }
            }
            self.functions.insert(address, (obj.clone().unbind(), fields));
        } else if let Ok(class) = obj.cast::<PyType>() {
            if self.classes.contains_key(&address) {
                return;
            }
            if let Ok(dict) = super::journal::class_dict(obj) {
                self.dict(&dict);
            }
            self.classes
                .insert(address, (obj.clone().unbind(), class_fields(class)));
        }
    }

    /// Whether nothing noted changed since.
    pub fn holds(&self, py: Python<'_>) -> bool {
        self.dicts.values().all(|(d, v)| version(d.bind(py)) == *v)
            && self.functions.values().all(|(f, fields)| {
                f.bind(py)
                    .cast::<PyFunction>()
                    .is_ok_and(|f| function_fields(f) == *fields)
            })
            && self
                .classes
                .values()
                .all(|(c, fields)| c.bind(py).cast::<PyType>().is_ok_and(|c| class_fields(c) == *fields))
    }

    /// How many objects were noted, for the report.
    pub fn noted(&self) -> usize {
        self.dicts.len() + self.functions.len() + self.classes.len()
    }
}

/// A dict's version tag: changed by CPython on every change to the dict.
pub fn dict_version(dict: &Bound<'_, PyDict>) -> u64 {
    version(dict)
}

fn version(dict: &Bound<'_, PyDict>) -> u64 {
    // SAFETY: `dict` is a dict or a subclass of it (checked by its type),
    // whose C layout starts with `PyDictObject`; `ma_version_tag` is a
    // plain field there on 3.10 to 3.13, read with the GIL held.
    #[allow(deprecated)]
    unsafe {
        (*(dict.as_ptr() as *mut ffi::PyDictObject)).ma_version_tag
    }
}

fn function_fields(f: &Bound<'_, PyFunction>) -> FunctionFields {
    // SAFETY: `f` is a function (its type checked by the cast), so its C
    // layout is `PyFunctionObject`, whose fields pyo3-ffi lays out per
    // CPython version; read with the GIL held, no reference taken.
    let raw = unsafe { &*(f.as_ptr() as *const ffi::PyFunctionObject) };
    let mut fields = [
        raw.func_code,
        raw.func_globals,
        raw.func_defaults,
        raw.func_kwdefaults,
        raw.func_closure,
        raw.func_doc,
        raw.func_dict,
        raw.func_module,
        raw.func_qualname,
        std::ptr::null_mut(),
    ]
    .map(|p| p as usize);
    // `__annotations__`: CPython makes an empty dict when it is first read,
    // and the merge reads it only when one of the two functions has
    // annotations of its own, so what counts is whether it has.
    fields[9] = usize::from(has_annotations(f.py(), raw.func_annotations));
    let mut cells = Vec::new();
    if !raw.func_closure.is_null() {
        // SAFETY: a function's closure is a tuple of cells (or NULL,
        // checked); `PyCell_Get` returns a new reference or NULL for an
        // empty cell, and is only compared, then released.
        let closure = unsafe { Bound::from_borrowed_ptr(f.py(), raw.func_closure) };
        if let Ok(closure) = closure.cast::<PyTuple>() {
            for cell in closure.iter() {
                let held = unsafe { ffi::PyCell_Get(cell.as_ptr()) };
                if held.is_null() {
                    cells.push(0); // an empty cell (no error is set)
                } else {
                    cells.push(held as usize);
                    unsafe { ffi::Py_DECREF(held) };
                }
            }
        }
    }
    FunctionFields { fields, cells }
}

/// A function's annotations field holds annotations (not NULL, nor the
/// empty dict a read makes).
fn has_annotations(py: Python<'_>, annotations: *mut ffi::PyObject) -> bool {
    if annotations.is_null() {
        return false;
    }
    // SAFETY: the field is NULL (checked) or a live object, borrowed.
    let annotations = unsafe { Bound::from_borrowed_ptr(py, annotations) };
    annotations.cast::<PyDict>().map_or(true, |d| !d.is_empty())
}

fn class_fields(class: &Bound<'_, PyType>) -> [usize; 2] {
    // SAFETY: a live type object, read with the GIL held.
    let tp = class.as_type_ptr();
    unsafe { [(*tp).tp_bases as usize, ffi::Py_TYPE(tp.cast()) as usize] }
}
