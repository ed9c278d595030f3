//! The undo log that makes a commit atomic.
//!
//! Every change the commit makes to the live program goes through here and
//! records what it replaced. Rolling back replays the log backwards, so the
//! program returns to exactly the objects it had, not to copies of them.

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};

use super::support::Support;

enum Entry {
    DictItem {
        dict: Py<PyDict>,
        key: Py<PyAny>,
        old: Option<Py<PyAny>>,
    },
    ListItem {
        list: Py<PyList>,
        index: usize,
        old: Py<PyAny>,
    },
    /// An attribute of a function or instance (`__code__`, `__class__`, ...).
    Attr {
        target: Py<PyAny>,
        name: String,
        old: Option<Py<PyAny>>,
    },
    /// An entry of a class's own `__dict__`, set through `setattr` so that
    /// CPython updates the type's slots.
    ClassAttr {
        class: Py<PyAny>,
        name: String,
        old: Option<Py<PyAny>>,
    },
    Cell {
        cell: Py<PyAny>,
        old: Option<Py<PyAny>>,
    },
    /// Instances' states saved before a transformer ran, as
    /// `support.save_state` makes them.
    States {
        saved: Py<PyList>,
    },
    /// The states of `objs[..saved.len()]`, saved before an eager
    /// transformer ran on them: `saved[i]` is a copy of `objs[i].__dict__`,
    /// or a `support.save_state` tuple for an instance with slots.
    InstanceStates {
        objs: Py<PyList>,
        saved: Py<PyList>,
    },
}

/// A log of changes, undone by [`Journal::rollback`].
#[derive(Default)]
pub struct Journal {
    entries: Vec<Entry>,
    /// Indexes of entries undone when the commit fails, but not kept for
    /// `pyreload rollback`: changed data (transformed instances and
    /// globals), which a rollback converts as it is then with the spec's
    /// reverse transformers; and the relinking of objects the new version
    /// created, which are garbage once rolled back. (Keeping those entries
    /// would keep every staged function, and so the whole staging
    /// namespace, alive for as long as the update can be rolled back.)
    data: Vec<usize>,
    /// While above zero, new entries are of the second kind above.
    relinking: u32,
}

impl Journal {
    /// Records changes to objects the new version created, until
    /// [`Journal::end_relinking`]. See `data`.
    pub fn begin_relinking(&mut self) {
        self.relinking += 1;
    }

    pub fn end_relinking(&mut self) {
        self.relinking = self.relinking.saturating_sub(1);
    }

    fn push(&mut self, entry: Entry) {
        if self.relinking > 0 {
            self.data.push(self.entries.len());
        }
        self.entries.push(entry);
    }

    pub fn set_item<'py>(
        &mut self,
        dict: &Bound<'py, PyDict>,
        key: &Bound<'py, PyAny>,
        value: &Bound<'py, PyAny>,
    ) -> PyResult<()> {
        let old = dict.get_item(key)?.map(Bound::unbind);
        dict.set_item(key, value)?;
        self.push(Entry::DictItem {
            dict: dict.clone().unbind(),
            key: key.clone().unbind(),
            old,
        });
        Ok(())
    }

    pub fn del_item<'py>(&mut self, dict: &Bound<'py, PyDict>, key: &Bound<'py, PyAny>) -> PyResult<()> {
        let old = dict.get_item(key)?.map(Bound::unbind);
        dict.del_item(key)?;
        self.push(Entry::DictItem {
            dict: dict.clone().unbind(),
            key: key.clone().unbind(),
            old,
        });
        Ok(())
    }

    pub fn set_list_item<'py>(
        &mut self,
        list: &Bound<'py, PyList>,
        index: usize,
        value: &Bound<'py, PyAny>,
    ) -> PyResult<()> {
        let old = list.get_item(index)?.unbind();
        list.set_item(index, value)?;
        self.push(Entry::ListItem {
            list: list.clone().unbind(),
            index,
            old,
        });
        Ok(())
    }

    pub fn set_attr<'py>(&mut self, target: &Bound<'py, PyAny>, name: &str, value: &Bound<'py, PyAny>) -> PyResult<()> {
        let old = target.getattr_opt(name)?.map(Bound::unbind);
        target.setattr(name, value)?;
        self.push(Entry::Attr {
            target: target.clone().unbind(),
            name: name.to_string(),
            old,
        });
        Ok(())
    }

    /// [`Journal::set_attr`] with a name the caller holds as a `str`
    /// already (an interned one): the merge's hot path, per function.
    pub fn set_attr_named<'py>(
        &mut self,
        target: &Bound<'py, PyAny>,
        name: &Bound<'py, pyo3::types::PyString>,
        value: &Bound<'py, PyAny>,
    ) -> PyResult<()> {
        let old = target.getattr_opt(name)?.map(Bound::unbind);
        target.setattr(name, value)?;
        self.push(Entry::Attr {
            target: target.clone().unbind(),
            name: name.to_str()?.to_owned(),
            old,
        });
        Ok(())
    }

    pub fn set_class_attr<'py>(
        &mut self,
        class: &Bound<'py, PyAny>,
        name: &str,
        value: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<()> {
        let old = class_dict_get(class, name)?;
        match value {
            Some(v) => type_setattr(class, name, v)?,
            None => remove_class_attr(class, name)?,
        }
        self.push(Entry::ClassAttr {
            class: class.clone().unbind(),
            name: name.to_string(),
            old,
        });
        Ok(())
    }

    pub fn set_cell<'py>(&mut self, cell: &Bound<'py, PyAny>, value: &Bound<'py, PyAny>) -> PyResult<()> {
        let old = cell.getattr_opt("cell_contents").ok().flatten().map(Bound::unbind);
        cell.setattr("cell_contents", value)?;
        self.push(Entry::Cell {
            cell: cell.clone().unbind(),
            old,
        });
        Ok(())
    }

    /// Starts a list of saved instance states; the transform appends to it
    /// as it goes, so a failure halfway is undone up to where it got.
    pub fn states<'py>(&mut self, py: Python<'py>) -> Bound<'py, PyList> {
        let saved = PyList::empty(py);
        self.data.push(self.entries.len());
        self.entries.push(Entry::States {
            saved: saved.clone().unbind(),
        });
        saved
    }

    /// Starts the saved states of `objs`, in order, for the eager loop
    /// (`eager.rs`), which appends each before converting its instance. A
    /// plain dict copy per instance, without a tuple naming the instance,
    /// keeps the journal's cost per instance to one copy.
    pub fn instance_states<'py>(&mut self, objs: &Bound<'py, PyList>) -> Bound<'py, PyList> {
        let saved = PyList::empty(objs.py());
        self.data.push(self.entries.len());
        self.entries.push(Entry::InstanceStates {
            objs: objs.clone().unbind(),
            saved: saved.clone().unbind(),
        });
        saved
    }

    /// Like [`Journal::set_item`], for a global whose data a transformer
    /// converted.
    pub fn set_data_item<'py>(
        &mut self,
        dict: &Bound<'py, PyDict>,
        key: &Bound<'py, PyAny>,
        value: &Bound<'py, PyAny>,
    ) -> PyResult<()> {
        self.data.push(self.entries.len());
        self.set_item(dict, key, value)
    }

    /// The journal of the code changes only, kept after a commit so that
    /// `pyreload rollback` can restore the old version's code.
    pub fn into_code_only(self) -> Journal {
        let data = self.data;
        let entries = self
            .entries
            .into_iter()
            .enumerate()
            .filter(|(i, _)| !data.contains(i))
            .map(|(_, e)| e)
            .collect();
        Journal {
            entries,
            data: Vec::new(),
            relinking: 0,
        }
    }

    /// The functions this journal patched, as (dotted name, current code,
    /// code it would restore).
    pub fn patched_codes<'py>(&self, py: Python<'py>) -> Vec<(String, Bound<'py, PyAny>, Bound<'py, PyAny>)> {
        self.entries
            .iter()
            .filter_map(|e| match e {
                Entry::Attr {
                    target,
                    name,
                    old: Some(old),
                } if name == "__code__" => {
                    let f = target.bind(py);
                    let module: String = f.getattr("__module__").ok()?.extract().ok()?;
                    let qualname: String = f.getattr("__qualname__").ok()?.extract().ok()?;
                    Some((
                        format!("{module}.{qualname}"),
                        f.getattr("__code__").ok()?,
                        old.bind(py).clone(),
                    ))
                }
                _ => None,
            })
            .collect()
    }

    /// Undoes every change, newest first. Returns the errors met on the way;
    /// undoing continues past them so that as much as possible is restored.
    pub fn rollback(self, py: Python<'_>, support: &Support<'_>) -> Vec<PyErr> {
        let mut errors = Vec::new();
        for entry in self.entries.into_iter().rev() {
            let result = match entry {
                Entry::States { saved } => support.restore_states(saved.bind(py)),
                Entry::InstanceStates { objs, saved } => support.restore_instance_states(objs.bind(py), saved.bind(py)),
                Entry::DictItem { dict, key, old } => match old {
                    Some(old) => dict.bind(py).set_item(key.bind(py), old.bind(py)),
                    None => dict.bind(py).del_item(key.bind(py)),
                },
                Entry::ListItem { list, index, old } => list.bind(py).set_item(index, old.bind(py)),
                Entry::Attr { target, name, old } => match old {
                    Some(old) => target.bind(py).setattr(name.as_str(), old.bind(py)),
                    None => target.bind(py).delattr(name.as_str()),
                },
                Entry::ClassAttr { class, name, old } => match old {
                    Some(old) => type_setattr(class.bind(py), &name, old.bind(py)),
                    // Already gone (a finished lazy migration removes its
                    // hooks itself): nothing to undo.
                    None => match class_dict_get(class.bind(py), &name) {
                        Ok(Some(_)) => remove_class_attr(class.bind(py), &name),
                        other => other.map(drop),
                    },
                },
                Entry::Cell { cell, old } => match old {
                    Some(old) => cell.bind(py).setattr("cell_contents", old.bind(py)),
                    None => cell.bind(py).delattr("cell_contents"),
                },
            };
            if let Err(e) = result {
                errors.push(e);
            }
        }
        errors
    }
}

/// Removes an entry of a class's own namespace. `__new__` needs more than
/// `delattr` to leave the class as it was: see [`super::world::remove_own_new`].
pub fn remove_class_attr(class: &Bound<'_, PyAny>, name: &str) -> PyResult<()> {
    if name == "__new__" {
        super::world::remove_own_new(class)
    } else {
        type_setattr_raw(class, name, None)
    }
}

/// Sets an entry of a class's own namespace as `type.__setattr__` does:
/// CPython updates the type's slots, and a metaclass's own `__setattr__`
/// (an enum's refuses to reassign a member) does not stand in the way of
/// the commit or its undoing.
fn type_setattr(class: &Bound<'_, PyAny>, name: &str, value: &Bound<'_, PyAny>) -> PyResult<()> {
    type_setattr_raw(class, name, Some(value))
}

/// `type.__setattr__(class, name, value)`, or `type.__delattr__` for None.
fn type_setattr_raw(class: &Bound<'_, PyAny>, name: &str, value: Option<&Bound<'_, PyAny>>) -> PyResult<()> {
    let py = class.py();
    let name = pyo3::types::PyString::new(py, name);
    let class = class.cast::<pyo3::types::PyType>()?;
    let value_ptr = value.map_or(std::ptr::null_mut(), |v| v.as_ptr());
    // SAFETY: `type`'s own tp_setattro (type_setattro), called as
    // `type.__setattr__`/`__delattr__` would call it, minus the check
    // that the slot belongs to the object's type: `class` is a type
    // (checked), `name` a str, the value a live object or NULL (delete);
    // it returns -1 with an exception set on failure.
    let setattro = unsafe { pyo3::ffi::PyType_Type.tp_setattro };
    match setattro {
        Some(setattro) if unsafe { setattro(class.as_ptr(), name.as_ptr(), value_ptr) } == 0 => Ok(()),
        Some(_) => Err(PyErr::fetch(py)),
        None => match value {
            Some(v) => py
                .get_type::<pyo3::types::PyType>()
                .call_method1("__setattr__", (class, name, v))
                .map(drop),
            None => py
                .get_type::<pyo3::types::PyType>()
                .call_method1("__delattr__", (class, name))
                .map(drop),
        },
    }
}

/// The raw entry in a class's own namespace (not inherited, no descriptor
/// binding), as `cls.__dict__.get(name)`.
/// An entry that holds `None` is `Some(None)`: only a missing entry is `None`.
pub fn class_dict_get<'py>(class: &Bound<'py, PyAny>, name: &str) -> PyResult<Option<Py<PyAny>>> {
    Ok(class_dict(class)?.get_item(name)?.map(Bound::unbind))
}

/// A class's own namespace as the dict it is (what `cls.__dict__` shows
/// through a read-only proxy). The merge reads it once per attribute;
/// going through the proxy cost three Python calls each time.
pub fn class_dict<'py>(class: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyDict>> {
    let py = class.py();
    let ty = class.cast::<pyo3::types::PyType>()?;
    // SAFETY: `ty` is a live type object and we hold the GIL. From 3.12
    // PyType_GetDict returns a new reference to the type's dict; before, the
    // dict is `tp_dict`, borrowed (set for every ready type).
    #[cfg(Py_3_12)]
    let dict = unsafe { Bound::from_owned_ptr_or_opt(py, pyo3::ffi::PyType_GetDict(ty.as_type_ptr())) };
    #[cfg(not(Py_3_12))]
    let dict = unsafe { Bound::from_borrowed_ptr_or_opt(py, (*ty.as_type_ptr()).tp_dict) };
    match dict {
        Some(d) => Ok(d.cast_into::<PyDict>()?),
        // Not ready, or a proxy of something else: ask as Python would.
        None => Ok(class.getattr("__dict__")?.call_method0("copy")?.cast_into::<PyDict>()?),
    }
}
