//! The undo log that makes a commit atomic.
//!
//! Every change the commit makes to the live program goes through here and
//! records what it replaced. Rolling back replays the log backwards, so the
//! program returns to exactly the objects it had, not to copies of them.
//!
//! A journal can also *plan* ([`Journal::planning`]): the merge runs ahead
//! of the pause, with the program running, and every change it would make
//! is recorded with the value it expects to replace instead of being made.
//! In the pause, [`Journal::replay`] makes the recorded changes, each
//! journaled as it would have been, after checking that its target still
//! holds the expected value; the first one that does not stops the replay,
//! which the caller undoes ([`Journal::undo_to`]) before merging in the
//! pause after all.

use std::collections::HashMap;

use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyString};

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
        name: Py<PyString>,
        old: Option<Py<PyAny>>,
    },
    /// An entry of a class's own `__dict__`, set through `setattr` so that
    /// CPython updates the type's slots.
    ClassAttr {
        class: Py<PyAny>,
        name: Py<PyString>,
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

/// A change decided ahead of the pause: what to write where, and what the
/// target held when it was decided.
pub struct Planned {
    op: Op,
    /// The value the target held (None: absent), or the value an earlier
    /// planned change to the same target writes.
    expected: Option<Py<PyAny>>,
    /// Made while relinking (see `Journal::data`).
    relinking: bool,
}

/// A planned write; a `None` value deletes.
enum Op {
    DictItem {
        dict: Py<PyDict>,
        key: Py<PyAny>,
        value: Option<Py<PyAny>>,
    },
    ListItem {
        list: Py<PyList>,
        index: usize,
        value: Py<PyAny>,
    },
    Attr {
        target: Py<PyAny>,
        name: Py<PyString>,
        value: Py<PyAny>,
    },
    ClassAttr {
        class: Py<PyAny>,
        name: Py<PyString>,
        value: Option<Py<PyAny>>,
    },
    Cell {
        cell: Py<PyAny>,
        value: Py<PyAny>,
    },
}

/// Which part of an object a planned change writes, to find an earlier
/// planned change to the same place.
#[derive(PartialEq, Eq, Hash)]
enum Slot {
    Key(usize),
    Name(String),
    Index(usize),
    Cell,
}

/// The changes a planning journal recorded, with what each expects.
#[derive(Default)]
struct Plan {
    writes: Vec<Planned>,
    /// (target address, slot) -> the value planned for it so far.
    overlay: HashMap<(usize, Slot), Option<Py<PyAny>>>,
}

/// Why [`Journal::replay`] stopped.
pub enum Replay {
    /// A target no longer holds what the plan expected: the program
    /// changed it since. Nothing is wrong; the merge is made in the pause.
    Stale,
    /// A write failed, as it would have in the pause.
    Failed(PyErr),
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
    /// Set while planning: changes are recorded here, not made.
    plan: Option<Plan>,
}

impl Journal {
    /// A journal that changes nothing and records the changes asked of it,
    /// for [`Journal::into_planned`].
    pub fn planning() -> Journal {
        Journal {
            plan: Some(Plan::default()),
            ..Journal::default()
        }
    }

    pub fn is_planning(&self) -> bool {
        self.plan.is_some()
    }

    /// The changes a planning journal recorded, in order.
    pub fn into_planned(self) -> Vec<Planned> {
        self.plan.map(|p| p.writes).unwrap_or_default()
    }

    /// How many entries the journal holds: a mark for [`Journal::undo_to`].
    pub fn mark(&self) -> usize {
        self.entries.len()
    }

    /// Records a change in a planning journal, with what `target`'s `slot`
    /// holds now (`current`) or what an earlier planned change puts there.
    fn plan_write<'py>(
        &mut self,
        py: Python<'py>,
        target: usize,
        slot: Slot,
        current: Option<Bound<'py, PyAny>>,
        op: Op,
    ) {
        let relinking = self.relinking > 0;
        let Some(plan) = self.plan.as_mut() else { return };
        let value = match &op {
            Op::DictItem { value, .. } | Op::ClassAttr { value, .. } => value.as_ref().map(|v| v.clone_ref(py)),
            Op::ListItem { value, .. } | Op::Attr { value, .. } | Op::Cell { value, .. } => Some(value.clone_ref(py)),
        };
        let expected = match plan.overlay.insert((target, slot), value) {
            Some(earlier) => earlier,
            None => current.map(Bound::unbind),
        };
        plan.writes.push(Planned {
            op,
            expected,
            relinking,
        });
    }

    /// Makes the planned changes, journaling each as the method that
    /// planned it would have, after checking that its target holds what
    /// the plan expected. Stops at the first that does not (or fails); the
    /// changes made until then are in the journal, for the caller to undo.
    pub fn replay(&mut self, py: Python<'_>, planned: &[Planned]) -> Result<(), Replay> {
        let cell_contents = intern!(py, "cell_contents");
        self.entries.reserve(planned.len());
        for p in planned {
            let expected = p.expected.as_ref().map(|e| e.bind(py));
            let held = |now: &Option<Bound<'_, PyAny>>| match (now, expected) {
                (None, None) => true,
                (Some(now), Some(e)) => now.is(e),
                _ => false,
            };
            let entry = match &p.op {
                Op::DictItem { dict, key, value } => {
                    let (dict, key) = (dict.bind(py), key.bind(py));
                    let old = dict.get_item(key).map_err(Replay::Failed)?;
                    if !held(&old) {
                        return Err(Replay::Stale);
                    }
                    match value {
                        Some(v) => dict.set_item(key, v.bind(py)),
                        None => dict.del_item(key),
                    }
                    .map_err(Replay::Failed)?;
                    Entry::DictItem {
                        dict: dict.clone().unbind(),
                        key: key.clone().unbind(),
                        old: old.map(Bound::unbind),
                    }
                }
                Op::ListItem { list, index, value } => {
                    let list = list.bind(py);
                    let old = list.get_item(*index).ok();
                    if !held(&old) {
                        return Err(Replay::Stale);
                    }
                    list.set_item(*index, value.bind(py)).map_err(Replay::Failed)?;
                    Entry::ListItem {
                        list: list.clone().unbind(),
                        index: *index,
                        old: old.expect("held").unbind(),
                    }
                }
                Op::Attr { target, name, value } => {
                    let (target, name) = (target.bind(py), name.bind(py));
                    let old = target.getattr_opt(name).map_err(Replay::Failed)?;
                    if !held(&old) {
                        return Err(Replay::Stale);
                    }
                    target.setattr(name, value.bind(py)).map_err(Replay::Failed)?;
                    Entry::Attr {
                        target: target.clone().unbind(),
                        name: name.clone().unbind(),
                        old: old.map(Bound::unbind),
                    }
                }
                Op::ClassAttr { class, name, value } => {
                    let (class, name) = (class.bind(py), name.bind(py));
                    let old = class_dict(class)
                        .and_then(|d| d.get_item(name))
                        .map_err(Replay::Failed)?;
                    if !held(&old) {
                        return Err(Replay::Stale);
                    }
                    type_setattr_named(class, name, value.as_ref().map(|v| v.bind(py))).map_err(Replay::Failed)?;
                    Entry::ClassAttr {
                        class: class.clone().unbind(),
                        name: name.clone().unbind(),
                        old: old.map(Bound::unbind),
                    }
                }
                Op::Cell { cell, value } => {
                    let cell = cell.bind(py);
                    let old = cell.getattr_opt(cell_contents).ok().flatten();
                    if !held(&old) {
                        return Err(Replay::Stale);
                    }
                    cell.setattr(cell_contents, value.bind(py)).map_err(Replay::Failed)?;
                    Entry::Cell {
                        cell: cell.clone().unbind(),
                        old: old.map(Bound::unbind),
                    }
                }
            };
            if p.relinking {
                self.data.push(self.entries.len());
            }
            self.entries.push(entry);
        }
        Ok(())
    }

    /// Undoes the entries from `mark` on, newest first, leaving the older
    /// ones: a replay that stopped halfway, before the merge is made again.
    pub fn undo_to(&mut self, py: Python<'_>, support: &Support<'_>, mark: usize) -> Vec<PyErr> {
        let tail = Journal {
            entries: self.entries.split_off(mark),
            ..Journal::default()
        };
        self.data.retain(|&i| i < mark);
        tail.rollback(py, support)
    }

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

    /// `dict[key] = value`, undone by putting back what the key held.
    pub fn set_item<'py>(
        &mut self,
        dict: &Bound<'py, PyDict>,
        key: &Bound<'py, PyAny>,
        value: &Bound<'py, PyAny>,
    ) -> PyResult<()> {
        self.write_item(dict, key, Some(value))
    }

    /// `del dict[key]`, undone by putting the value back.
    pub fn del_item<'py>(&mut self, dict: &Bound<'py, PyDict>, key: &Bound<'py, PyAny>) -> PyResult<()> {
        self.write_item(dict, key, None)
    }

    /// `dict[key] = value`, or `del dict[key]` for None: planned, or made
    /// and journaled with what the key held.
    fn write_item<'py>(
        &mut self,
        dict: &Bound<'py, PyDict>,
        key: &Bound<'py, PyAny>,
        value: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<()> {
        if self.is_planning() {
            let op = Op::DictItem {
                dict: dict.clone().unbind(),
                key: key.clone().unbind(),
                value: value.map(|v| v.clone().unbind()),
            };
            self.plan_write(
                dict.py(),
                dict.as_ptr() as usize,
                Slot::Key(key.as_ptr() as usize),
                dict.get_item(key)?,
                op,
            );
            return Ok(());
        }
        let old = dict.get_item(key)?.map(Bound::unbind);
        match value {
            Some(value) => dict.set_item(key, value)?,
            None => dict.del_item(key)?,
        }
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
        if self.is_planning() {
            let op = Op::ListItem {
                list: list.clone().unbind(),
                index,
                value: value.clone().unbind(),
            };
            self.plan_write(
                list.py(),
                list.as_ptr() as usize,
                Slot::Index(index),
                Some(list.get_item(index)?),
                op,
            );
            return Ok(());
        }
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
        self.set_attr_named(target, &PyString::intern(target.py(), name), value)
    }

    /// [`Journal::set_attr`] with a name the caller holds as a `str`
    /// already (an interned one): the merge's hot path, per function.
    pub fn set_attr_named<'py>(
        &mut self,
        target: &Bound<'py, PyAny>,
        name: &Bound<'py, pyo3::types::PyString>,
        value: &Bound<'py, PyAny>,
    ) -> PyResult<()> {
        if self.is_planning() {
            let current = target.getattr_opt(name)?;
            let op = Op::Attr {
                target: target.clone().unbind(),
                name: name.clone().unbind(),
                value: value.clone().unbind(),
            };
            self.plan_write(
                target.py(),
                target.as_ptr() as usize,
                Slot::Name(name.to_str()?.to_owned()),
                current,
                op,
            );
            return Ok(());
        }
        let old = target.getattr_opt(name)?.map(Bound::unbind);
        target.setattr(name, value)?;
        self.push(Entry::Attr {
            target: target.clone().unbind(),
            name: name.clone().unbind(),
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
        if self.is_planning() {
            let current = class_dict(class)?.get_item(name)?;
            let op = Op::ClassAttr {
                class: class.clone().unbind(),
                name: PyString::intern(class.py(), name).unbind(),
                value: value.map(|v| v.clone().unbind()),
            };
            self.plan_write(
                class.py(),
                class.as_ptr() as usize,
                Slot::Name(name.to_owned()),
                current,
                op,
            );
            return Ok(());
        }
        let old = class_dict_get(class, name)?;
        match value {
            Some(v) => type_setattr(class, name, v)?,
            None => remove_class_attr(class, name)?,
        }
        self.push(Entry::ClassAttr {
            class: class.clone().unbind(),
            name: PyString::intern(class.py(), name).unbind(),
            old,
        });
        Ok(())
    }

    /// Gives each function the code that differs from its own only in
    /// its lines ([`super::merge::Merged::take_moved`]), journaled as the
    /// merge's other code writes, so that a rollback restores it. The
    /// world runs again: a function whose code the program replaced
    /// meanwhile keeps what the program gave it. Returns how many took it.
    pub fn give_moved_code(
        &mut self,
        py: Python<'_>,
        moved: Vec<(Py<PyAny>, Py<PyAny>, Py<PyAny>)>,
    ) -> PyResult<usize> {
        let code = intern!(py, "__code__");
        let mut given = 0;
        for (function, old, new) in moved {
            let function = function.bind(py);
            if !function.getattr(code)?.is(old.bind(py)) {
                continue;
            }
            function.setattr(code, new.bind(py))?;
            self.push(Entry::Attr {
                target: function.clone().unbind(),
                name: code.clone().unbind(),
                old: Some(old),
            });
            given += 1;
        }
        Ok(given)
    }

    pub fn set_cell<'py>(&mut self, cell: &Bound<'py, PyAny>, value: &Bound<'py, PyAny>) -> PyResult<()> {
        if self.is_planning() {
            let current = cell.getattr_opt(intern!(cell.py(), "cell_contents")).ok().flatten();
            let op = Op::Cell {
                cell: cell.clone().unbind(),
                value: value.clone().unbind(),
            };
            self.plan_write(cell.py(), cell.as_ptr() as usize, Slot::Cell, current, op);
            return Ok(());
        }
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
            ..Journal::default()
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
                } if name.bind(py).to_str().is_ok_and(|n| n == "__code__") => {
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
                    Some(old) => target.bind(py).setattr(name.bind(py), old.bind(py)),
                    None => target.bind(py).delattr(name.bind(py)),
                },
                Entry::ClassAttr { class, name, old } => {
                    let (class, name) = (class.bind(py), name.bind(py));
                    match old {
                        Some(old) => type_setattr_named(class, name, Some(old.bind(py))),
                        // Already gone (a finished lazy migration removes its
                        // hooks itself): nothing to undo.
                        None => match class_dict(class).and_then(|d| d.get_item(name)) {
                            Ok(Some(_)) => type_setattr_named(class, name, None),
                            other => other.map(drop),
                        },
                    }
                }
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
    type_setattr_named(class, &PyString::new(class.py(), name), value)
}

/// [`type_setattr_raw`] with the name as a `str` already; `__new__` is
/// removed as [`remove_class_attr`] does.
fn type_setattr_named(
    class: &Bound<'_, PyAny>,
    name: &Bound<'_, PyString>,
    value: Option<&Bound<'_, PyAny>>,
) -> PyResult<()> {
    if value.is_none() && name.to_str()? == "__new__" {
        return super::world::remove_own_new(class);
    }
    let py = class.py();
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
