//! What the merge rule needs to know about a value, decided in Rust.
//!
//! `is_constant` and `is_code_like` decide, for every name an update
//! touches, whether it takes the new value or keeps the running one (see
//! merge.rs). They were Python helpers (support.py), called once or twice
//! per name inside the stopped world; at thousands of names that call was
//! most of the pause. These are the same rules, on type pointers, with the
//! one case that needs Python (`__wrapped__`, which an object may compute)
//! still asked of the object.

use pyo3::ffi;
use pyo3::intern;
use pyo3::prelude::*;

/// How deep a tuple or frozenset of constants is followed, as in
/// support.py's `is_constant`.
const MAX_DEPTH: usize = 4;

extern "C" {
    /// The type of bound methods (`types.MethodType`), exported by
    /// libpython but not declared by pyo3's ffi.
    static mut PyMethod_Type: ffi::PyTypeObject;
}

fn is_type(obj: &Bound<'_, PyAny>, ty: *mut ffi::PyTypeObject) -> bool {
    // SAFETY: `obj` is a live object; reading its type pointer is what Py_TYPE does.
    unsafe { ffi::Py_TYPE(obj.as_ptr()) == ty }
}

fn instance_of(obj: &Bound<'_, PyAny>, ty: *mut ffi::PyTypeObject) -> bool {
    // SAFETY: as above; PyObject_TypeCheck reads the type and its MRO.
    unsafe { ffi::PyObject_TypeCheck(obj.as_ptr(), ty) != 0 }
}

/// Plain immutable values (None, bool, int, float, complex, str, bytes,
/// Ellipsis, and tuples or frozensets of them, of these exact types): these
/// take the new source's value on reload.
pub fn is_constant(value: &Bound<'_, PyAny>) -> bool {
    constant_at(value, 0)
}

fn constant_at(value: &Bound<'_, PyAny>, depth: usize) -> bool {
    // The addresses of CPython's static type objects (taking one is safe).
    let exact = [
        &raw mut ffi::PyBool_Type,
        &raw mut ffi::PyLong_Type,
        &raw mut ffi::PyFloat_Type,
        &raw mut ffi::PyComplex_Type,
        &raw mut ffi::PyUnicode_Type,
        &raw mut ffi::PyBytes_Type,
    ];
    if value.is_none() || exact.iter().any(|&t| is_type(value, t)) {
        return true;
    }
    // SAFETY: Py_Ellipsis is a static singleton.
    if value.as_ptr() == unsafe { ffi::Py_Ellipsis() } {
        return true;
    }
    let (tuple, frozenset) = (&raw mut ffi::PyTuple_Type, &raw mut ffi::PyFrozenSet_Type);
    if (is_type(value, tuple) || is_type(value, frozenset)) && depth < MAX_DEPTH {
        return match value.try_iter() {
            Ok(items) => items.flatten().all(|v| constant_at(&v, depth + 1)),
            Err(_) => false,
        };
    }
    false
}

/// Functions, classes, modules and descriptors: what a new version of the
/// source replaces, as opposed to data the program has built up.
pub fn is_code_like(value: &Bound<'_, PyAny>) -> bool {
    {
        if instance_of(value, &raw mut ffi::PyMemberDescr_Type) || instance_of(value, &raw mut ffi::PyGetSetDescr_Type)
        {
            return false;
        }
        let code_types = [
            &raw mut ffi::PyFunction_Type,
            &raw mut ffi::PyCFunction_Type,
            &raw mut PyMethod_Type,
            &raw mut ffi::PyStaticMethod_Type,
            &raw mut ffi::PyClassMethod_Type,
            &raw mut ffi::PyProperty_Type,
            &raw mut ffi::PyType_Type,
            &raw mut ffi::PyModule_Type,
        ];
        if code_types.iter().any(|&t| instance_of(value, t)) {
            return true;
        }
    }
    // Plain data of the built-in kinds has neither `__wrapped__` nor `__get__`.
    if is_constant(value) || is_builtin_container(value) {
        return false;
    }
    if value.hasattr(intern!(value.py(), "__wrapped__")).unwrap_or(false) {
        return true;
    }
    // `hasattr(type(value), "__get__")`: the type is a descriptor type.
    value
        .get_type()
        .hasattr(intern!(value.py(), "__get__"))
        .unwrap_or(false)
}

/// Exact dicts, lists and sets: data, and asking them for attributes would
/// only say so more slowly.
fn is_builtin_container(value: &Bound<'_, PyAny>) -> bool {
    [
        &raw mut ffi::PyDict_Type,
        &raw mut ffi::PyList_Type,
        &raw mut ffi::PySet_Type,
        &raw mut ffi::PyByteArray_Type,
    ]
    .iter()
    .any(|&t| is_type(value, t))
}
