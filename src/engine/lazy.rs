//! The lazy migration's marks and attribute hooks, in C.
//!
//! A lazy migration puts hooks on the class (`__getattribute__`,
//! `__setattr__`, `__delattr__`, `__new__`) that convert an instance on its
//! first use. They stay on until the sweep (sweep.rs) has converted every
//! instance, and the program runs meanwhile, so every attribute access to an
//! instance of the class goes through a hook for the whole sweep: the
//! program's, and the transformer's own (`item.version = 2` while the sweep
//! converts `item`). Written in Python, each such access ran two Python
//! frames (the hook and `LazyMigration.ensure`) and several dict lookups,
//! which cost the sweep more than its own loop did. Here the three attribute
//! hooks are C callables whose fast path (the instance needs nothing, or it
//! is the one this thread is converting) does one lookup in [`Marks`] and
//! then the base slot, without entering the interpreter. Only an instance
//! that needs converting goes to `LazyMigration.ensure` (support.py), which
//! converts it under the migration's lock as before.
//!
//! # Which instances need converting
//!
//! [`Marks`] answers by instance address. Until the sweep has found the
//! instances, an instance needs converting unless it is in `done` (as when
//! the marks were weak references by id in support.py): converted ones and
//! those created after the update (the `__new__` hook) go there, and a weak
//! reference from support.py takes an instance out when it dies, so that no
//! later object at its address inherits the mark. Once the sweep's walk has
//! put every live instance not converted yet in `pending` (`complete`), an
//! instance needs converting only if it is there; the sweep's queue keeps
//! each of them alive, so its address stands for it. An instance that
//! becomes one of the class's after the update by other means than its
//! `__new__` (`object.__new__(cls)`, assigning `__class__`) is converted on
//! first use before the walk, as it always was, and not after it: it was
//! not a live instance of the old class. The sweep converts with no weak
//! reference and no hash lookup per instance; should the hooks stay (an
//! instance failed), [`Sweep::end`](super::sweep::Sweep::end) moves the
//! converted instances to `done`, with weak references, and the marks go
//! back to the first rule.
//!
//! # The hook objects
//!
//! A hook is an instance of a small heap type (`pyreload.lazy_hook`) with
//! `Py_TPFLAGS_METHOD_DESCRIPTOR`, so that a slot call (`obj.x = 1` is
//! `tp_setattro`, which CPython's `slot_tp_setattro` turns into a lookup of
//! `__setattr__` on the type) calls it with the instance as first argument
//! and no bound method is made; vectorcall, so no argument tuple either. Its
//! `__get__` binds like a function's, so `Item.__setattr__(obj, k, v)`,
//! `obj.__setattr__(k, v)` and `super().__setattr__(k, v)` work as they did.
//! It holds the class, `ensure` and the base callable (what
//! `cls.__setattr__` was before the hooks), and takes part in garbage
//! collection, as the closures it replaces did. When the base is `object`'s
//! own slot wrapper, the hook calls `PyObject_GenericGetAttr` /
//! `PyObject_GenericSetAttr` directly, for instances of the class only;
//! anything else goes through the base as a call.
//!
//! Everything here runs with the GIL held and never calls Python while the
//! marks' mutex is held.

use std::ffi::c_void;
use std::os::raw::{c_int, c_uint, c_ulong};
use std::sync::{Arc, Mutex, MutexGuard};

use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyType;

use super::ptrmap::{AddressMap, AddressSet};

/// Addresses (8-byte aligned) as bits, one bitmap per 64 KiB of address
/// space. The sweep's walk and loop visit instances roughly in allocation
/// order, so consecutive ones share a bitmap word that is already in cache,
/// where a hash set of a million addresses missed the cache twice per
/// lookup (it was 30% of a 300k sweep, perf). It takes at most one bit per
/// 8 bytes of the address space its instances span, in chunks of 1 KiB
/// where there is one.
#[derive(Default)]
struct AddressBits {
    chunks: AddressMap<Box<[u64; CHUNK_WORDS]>>,
}

const CHUNK_SHIFT: u32 = 16;
const CHUNK_WORDS: usize = (1 << CHUNK_SHIFT) / 8 / 64;

impl AddressBits {
    fn at(addr: usize) -> (usize, usize, u64) {
        let bit = (addr & ((1 << CHUNK_SHIFT) - 1)) >> 3;
        (addr >> CHUNK_SHIFT, bit / 64, 1 << (bit % 64))
    }

    fn insert(&mut self, addr: usize) {
        let (chunk, word, mask) = Self::at(addr);
        self.chunks.entry(chunk).or_insert_with(|| Box::new([0; CHUNK_WORDS]))[word] |= mask;
    }

    /// Takes `addr` out; true if it was in.
    fn remove(&mut self, addr: usize) -> bool {
        let (chunk, word, mask) = Self::at(addr);
        match self.chunks.get_mut(&chunk) {
            Some(bits) => {
                let was = bits[word] & mask != 0;
                bits[word] &= !mask;
                was
            }
            None => false,
        }
    }

    fn contains(&self, addr: usize) -> bool {
        let (chunk, word, mask) = Self::at(addr);
        self.chunks.get(&chunk).is_some_and(|bits| bits[word] & mask != 0)
    }
}

/// The marks of one migration, by instance address.
#[derive(Default)]
pub struct Marks {
    /// Converted, or created after the update (`__new__`); weak references
    /// from support.py take out those that die. While the marks are
    /// complete, instances the sweep converts are not added (they are
    /// alive, and not pending): see [`Marks::incomplete`].
    done: AddressSet,
    /// While complete: the live instances from before the update that wait
    /// for converting.
    pending: AddressBits,
    /// Every live instance from before the update not converted yet is in
    /// `pending` (the sweep's walk has run).
    complete: bool,
    /// Instances being converted, with the ident of the thread converting
    /// each (`PyThread_get_thread_ident`, as `threading.get_ident()`). A
    /// transformer may use other instances, so there may be a few.
    converting: Vec<(usize, c_ulong)>,
    /// The hooks are off ([`Marks::clear`]): nothing needs converting. A
    /// thread that entered a hook before they came off may still be waiting
    /// for the migration's lock in `ensure`, behind the sweep's last
    /// batches; once it gets the lock its instance is converted already, and
    /// empty marks would have it converted a second time.
    off: bool,
}

impl Marks {
    /// Whether thread `me` must convert the instance at `addr` (or wait for
    /// the thread converting it) before using it.
    fn needs(&self, addr: usize, me: c_ulong) -> bool {
        if self.off {
            return false;
        }
        if let Some(&(_, thread)) = self.converting.iter().find(|(a, _)| *a == addr) {
            return thread != me;
        }
        if self.complete {
            self.pending.contains(addr)
        } else {
            !self.done.contains(&addr)
        }
    }

    /// Under the migration's lock: marks the instance as being converted by
    /// `me`, or says it needs no converting (done, or being converted
    /// already by a transformer of this thread further up the stack).
    pub fn claim(&mut self, addr: usize, me: c_ulong) -> bool {
        if self.off || self.converting.iter().any(|(a, _)| *a == addr) {
            return false;
        }
        let waits = if self.complete {
            self.pending.remove(addr)
        } else {
            !self.done.contains(&addr)
        };
        if waits {
            self.converting.push((addr, me));
        }
        waits
    }

    /// After [`Marks::claim`]: converted, or back to waiting (failed).
    pub fn settle(&mut self, addr: usize, converted: bool) {
        if let Some(i) = self.converting.iter().rposition(|(a, _)| *a == addr) {
            self.converting.swap_remove(i);
        }
        match (converted, self.complete) {
            (true, false) => {
                self.done.insert(addr);
            }
            (false, true) => self.pending.insert(addr),
            (true, true) | (false, false) => {}
        }
    }

    /// The sweep's walk found this live instance: it waits unless converted
    /// or being converted. True if it is to be converted.
    pub fn found(&mut self, addr: usize) -> bool {
        if self.done.contains(&addr) || self.converting.iter().any(|(a, _)| *a == addr) {
            return false;
        }
        self.pending.insert(addr);
        true
    }

    /// Every live instance from before the update has a mark now.
    pub fn completed(&mut self) {
        self.complete = true;
    }

    /// The hooks stay past the sweep. Each of the sweep's instances that is
    /// not pending goes to `done` (`adopt` is called for each, and says if
    /// it was not there, so it needs a weak reference), then the marks go
    /// back to meaning "not done: needs converting".
    pub fn adopt(&mut self, addr: usize) -> bool {
        !self.pending.contains(addr) && self.done.insert(addr)
    }

    /// See [`Marks::adopt`].
    pub fn incomplete(&mut self) {
        self.complete = false;
        self.pending = AddressBits::default();
    }

    /// The hooks are off: the marks go, and from now on no instance needs
    /// converting (see the `off` field).
    pub fn clear(&mut self) {
        *self = Marks {
            off: true,
            ..Marks::default()
        };
    }
}

/// The marks as support.py's `LazyMigration` reaches them (its `table`).
#[pyclass(frozen, module = "pyreload", name = "LazyTable")]
pub struct LazyTable {
    marks: Arc<Mutex<Marks>>,
}

impl LazyTable {
    pub fn new() -> LazyTable {
        LazyTable {
            marks: Arc::new(Mutex::new(Marks::default())),
        }
    }

    pub fn marks(&self) -> MutexGuard<'_, Marks> {
        lock(&self.marks)
    }
}

/// The marks' lock. Nothing that holds it can panic, but a poisoned lock
/// would still hold consistent marks, so it is taken anyway.
fn lock(marks: &Mutex<Marks>) -> MutexGuard<'_, Marks> {
    marks.lock().unwrap_or_else(|e| e.into_inner())
}

fn me() -> c_ulong {
    // SAFETY: PyThread_get_thread_ident has no preconditions.
    unsafe { ffi::PyThread_get_thread_ident() }
}

fn address(obj: &Bound<'_, PyAny>) -> usize {
    obj.as_ptr() as usize
}

#[pymethods]
impl LazyTable {
    /// Whether this thread must convert `obj` (or wait for it) first.
    fn needs(&self, obj: &Bound<'_, PyAny>) -> bool {
        self.marks().needs(address(obj), me())
    }

    /// See [`Marks::claim`].
    fn claim(&self, obj: &Bound<'_, PyAny>) -> bool {
        self.marks().claim(address(obj), me())
    }

    /// See [`Marks::settle`].
    fn settle(&self, obj: &Bound<'_, PyAny>, converted: bool) {
        self.marks().settle(address(obj), converted);
    }

    /// Marks `obj` converted (an instance created after the update).
    fn mark(&self, obj: &Bound<'_, PyAny>) {
        self.marks().done.insert(address(obj));
    }

    /// The instance once at `key` (its id) died: its mark goes.
    fn forget(&self, key: usize) {
        self.marks().done.remove(&key);
    }

    /// A hook for the class attribute `name` (`__getattribute__`,
    /// `__setattr__` or `__delattr__`): converts instances of `class` that
    /// need it through `ensure`, then calls `base`.
    fn hook<'py>(
        &self,
        name: &str,
        class: &Bound<'py, PyType>,
        ensure: &Bound<'py, PyAny>,
        base: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let kind = match name {
            "__getattribute__" => Kind::Get,
            "__setattr__" => Kind::Set,
            "__delattr__" => Kind::Del,
            _ => {
                return Err(pyo3::exceptions::PyValueError::new_err(format!(
                    "no lazy hook for {name}"
                )))
            }
        };
        new_hook(kind, &self.marks, class, ensure, base)
    }
}

#[repr(u8)]
#[derive(Clone, Copy)]
enum Kind {
    // Zero, as the freshly allocated object reads before it is filled in.
    Get = 0,
    Set,
    Del,
}

/// The hook object's layout after the object header.
#[repr(C)]
struct Hook {
    ob_base: ffi::PyObject,
    /// Read by CPython at `__vectorcalloffset__`.
    vectorcall: Option<ffi::vectorcallfunc>,
    kind: Kind,
    /// True when `base` is `object`'s slot wrapper for this kind.
    generic: bool,
    /// From `Arc::into_raw`; released when the hook is freed.
    marks: *const Mutex<Marks>,
    // Strong references, NULL once cleared by the collector.
    class: *mut ffi::PyObject,
    ensure: *mut ffi::PyObject,
    base: *mut ffi::PyObject,
}

unsafe extern "C" {
    /// Exported by every CPython; pyo3's ffi does not declare it.
    fn PyMethod_New(function: *mut ffi::PyObject, instance: *mut ffi::PyObject) -> *mut ffi::PyObject;
}

/// A hook called as a method: `(instance, name)` or `(instance, name, value)`.
///
/// # Safety
/// CPython calls it with the GIL held, `callable` a live [`Hook`], and
/// `args` holding `nargs` borrowed references.
unsafe extern "C" fn hook_call(
    callable: *mut ffi::PyObject,
    args: *const *mut ffi::PyObject,
    nargsf: usize,
    kwnames: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    let hook = &*(callable as *const Hook);
    let nargs = ffi::PyVectorcall_NARGS(nargsf);
    let wanted = match hook.kind {
        Kind::Get | Kind::Del => 2,
        Kind::Set => 3,
    };
    if nargs != wanted || (!kwnames.is_null() && ffi::PyTuple_Size(kwnames) != 0) {
        ffi::PyErr_SetString(
            ffi::PyExc_TypeError,
            match hook.kind {
                Kind::Get => c"__getattribute__ takes an instance and a name",
                Kind::Set => c"__setattr__ takes an instance, a name and a value",
                Kind::Del => c"__delattr__ takes an instance and a name",
            }
            .as_ptr(),
        );
        return std::ptr::null_mut();
    }
    if hook.base.is_null() || hook.ensure.is_null() || hook.class.is_null() {
        ffi::PyErr_SetString(ffi::PyExc_TypeError, c"a cleared lazy-migration hook".as_ptr());
        return std::ptr::null_mut();
    }
    let obj = *args;
    // Instances only: anything else (`Item.__setattr__(other, ...)`) is the
    // base's to accept or refuse, and is not converted.
    let instance = ffi::PyObject_TypeCheck(obj, hook.class.cast()) != 0;
    if instance {
        let needs = lock(&*hook.marks).needs(obj as usize, me());
        if needs {
            // The hook's fields stay valid: whoever called it holds it.
            let result = ffi::PyObject_CallOneArg(hook.ensure, obj);
            if result.is_null() {
                return std::ptr::null_mut();
            }
            ffi::Py_DECREF(result);
        }
        if hook.generic {
            let name = *args.add(1);
            return match hook.kind {
                Kind::Get => ffi::PyObject_GenericGetAttr(obj, name),
                Kind::Set => none_or_null(ffi::PyObject_GenericSetAttr(obj, name, *args.add(2))),
                Kind::Del => none_or_null(ffi::PyObject_GenericSetAttr(obj, name, std::ptr::null_mut())),
            };
        }
    }
    ffi::PyObject_Vectorcall(hook.base, args, nargs as usize, std::ptr::null_mut())
}

unsafe fn none_or_null(status: c_int) -> *mut ffi::PyObject {
    if status < 0 {
        std::ptr::null_mut()
    } else {
        ffi::Py_IncRef(ffi::Py_None());
        ffi::Py_None()
    }
}

/// Binds like a function: on an instance, a bound method; on the class, the
/// hook itself.
unsafe extern "C" fn hook_get(
    slf: *mut ffi::PyObject,
    obj: *mut ffi::PyObject,
    _type: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    if obj.is_null() || obj == ffi::Py_None() {
        ffi::Py_IncRef(slf);
        return slf;
    }
    PyMethod_New(slf, obj)
}

unsafe extern "C" fn hook_traverse(slf: *mut ffi::PyObject, visit: ffi::visitproc, arg: *mut c_void) -> c_int {
    let hook = slf as *mut Hook;
    for field in [(*hook).class, (*hook).ensure, (*hook).base] {
        if !field.is_null() {
            let status = visit(field, arg);
            if status != 0 {
                return status;
            }
        }
    }
    // Instances of a heap type visit their type (3.9 and later).
    visit(ffi::Py_TYPE(slf).cast(), arg)
}

unsafe extern "C" fn hook_clear(slf: *mut ffi::PyObject) -> c_int {
    let hook = slf as *mut Hook;
    for field in [&raw mut (*hook).class, &raw mut (*hook).ensure, &raw mut (*hook).base] {
        let old = *field;
        *field = std::ptr::null_mut();
        if !old.is_null() {
            ffi::Py_DECREF(old);
        }
    }
    0
}

unsafe extern "C" fn hook_dealloc(slf: *mut ffi::PyObject) {
    let tp = ffi::Py_TYPE(slf);
    ffi::PyObject_GC_UnTrack(slf.cast());
    hook_clear(slf);
    let hook = slf as *mut Hook;
    if !(*hook).marks.is_null() {
        drop(Arc::from_raw((*hook).marks));
        (*hook).marks = std::ptr::null();
    }
    ffi::PyObject_GC_Del(slf.cast());
    ffi::Py_DECREF(tp.cast());
}

static HOOK_TYPE: PyOnceLock<Py<PyType>> = PyOnceLock::new();

/// The hooks' type, made once per process. Making it takes some tens of
/// microseconds, so prepare calls this, not the pause.
pub fn hook_type(py: Python<'_>) -> PyResult<&Bound<'_, PyType>> {
    HOOK_TYPE
        .get_or_try_init(py, || {
            // CPython copies the slots and members into the type; the name
            // must outlive it (a literal).
            let mut members = [
                ffi::PyMemberDef {
                    name: c"__vectorcalloffset__".as_ptr(),
                    type_code: ffi::Py_T_PYSSIZET,
                    offset: std::mem::offset_of!(Hook, vectorcall) as ffi::Py_ssize_t,
                    flags: ffi::Py_READONLY,
                    doc: std::ptr::null(),
                },
                ffi::PyMemberDef::default(),
            ];
            let mut slots = [
                ffi::PyType_Slot {
                    slot: ffi::Py_tp_dealloc,
                    pfunc: hook_dealloc as *mut c_void,
                },
                ffi::PyType_Slot {
                    slot: ffi::Py_tp_traverse,
                    pfunc: hook_traverse as *mut c_void,
                },
                ffi::PyType_Slot {
                    slot: ffi::Py_tp_clear,
                    pfunc: hook_clear as *mut c_void,
                },
                ffi::PyType_Slot {
                    slot: ffi::Py_tp_call,
                    pfunc: ffi::PyVectorcall_Call as *mut c_void,
                },
                ffi::PyType_Slot {
                    slot: ffi::Py_tp_descr_get,
                    pfunc: hook_get as *mut c_void,
                },
                ffi::PyType_Slot {
                    slot: ffi::Py_tp_members,
                    pfunc: members.as_mut_ptr().cast(),
                },
                ffi::PyType_Slot {
                    slot: 0,
                    pfunc: std::ptr::null_mut(),
                },
            ];
            let mut spec = ffi::PyType_Spec {
                name: c"pyreload.lazy_hook".as_ptr(),
                basicsize: std::mem::size_of::<Hook>() as c_int,
                itemsize: 0,
                flags: (ffi::Py_TPFLAGS_DEFAULT
                    | ffi::Py_TPFLAGS_HAVE_GC
                    | ffi::Py_TPFLAGS_HAVE_VECTORCALL
                    | ffi::Py_TPFLAGS_METHOD_DESCRIPTOR
                    | ffi::Py_TPFLAGS_DISALLOW_INSTANTIATION
                    // So the program cannot reassign its `__call__` or
                    // `__get__` under the class it hooks.
                    | ffi::Py_TPFLAGS_IMMUTABLETYPE) as c_uint,
                slots: slots.as_mut_ptr(),
            };
            // SAFETY: the spec describes `Hook` and functions written for
            // it; the GIL is held. NULL has an exception set.
            unsafe {
                Bound::from_owned_ptr_or_err(py, ffi::PyType_FromSpec(&mut spec))
                    .map(|t| t.cast_into_unchecked::<PyType>().unbind())
            }
        })
        .map(|t| t.bind(py))
}

fn new_hook<'py>(
    kind: Kind,
    marks: &Arc<Mutex<Marks>>,
    class: &Bound<'py, PyType>,
    ensure: &Bound<'py, PyAny>,
    base: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyAny>> {
    let py = class.py();
    let tp = hook_type(py)?;
    let slot = match kind {
        Kind::Get => "__getattribute__",
        Kind::Set => "__setattr__",
        Kind::Del => "__delattr__",
    };
    // SAFETY: `PyBaseObject_Type` is `object`, static for the process.
    let object = unsafe { Bound::from_borrowed_ptr(py, (&raw mut ffi::PyBaseObject_Type).cast()) };
    let generic = base.is(&object.getattr(slot)?);
    // SAFETY: the type's basic size is that of `Hook`; GenericAlloc zeroes
    // it (a valid `Hook` with no fields set, as `hook_call` checks), takes
    // a reference to the type and tracks the object. Fields are filled in
    // before anything can run Python code.
    unsafe {
        let obj = Bound::from_owned_ptr_or_err(py, ffi::PyType_GenericAlloc(tp.as_type_ptr(), 0))?;
        let hook = obj.as_ptr() as *mut Hook;
        (*hook).vectorcall = Some(hook_call);
        (*hook).kind = kind;
        (*hook).generic = generic;
        (*hook).marks = Arc::into_raw(Arc::clone(marks));
        (*hook).class = class.clone().into_any().into_ptr();
        (*hook).ensure = ensure.clone().into_ptr();
        (*hook).base = base.clone().into_ptr();
        Ok(obj)
    }
}

#[cfg(test)]
mod tests {
    use super::Marks;

    const SWEEPER: std::os::raw::c_ulong = 1;
    const SERVER: std::os::raw::c_ulong = 2;

    /// A server thread reads an instance while the sweep converts it, so it
    /// waits in `ensure` for the migration's lock; the sweep converts it,
    /// finishes and takes the hooks off before that thread gets the lock.
    /// The instance must not be converted again (a transformer that renames
    /// an attribute raised KeyError on the second run, in
    /// tests/data_updates.rs, one run in five).
    #[test]
    fn a_thread_that_waited_out_the_sweep_converts_nothing() {
        let addr = 0x7f00_0000_1230;
        let mut marks = Marks::default();
        assert!(marks.found(addr));
        marks.completed();
        assert!(marks.claim(addr, SWEEPER));
        assert!(marks.needs(addr, SERVER), "the server thread waits for the sweep");
        marks.settle(addr, true);
        marks.clear();
        assert!(!marks.needs(addr, SERVER));
        assert!(!marks.claim(addr, SERVER), "converted once already");
        assert!(!marks.needs(0x7f00_0000_4560, SERVER), "nor anything else");
    }

    /// Before the walk, a converted instance's address stays done until the
    /// instance dies; the next object there is converted as an old one
    /// would be.
    #[test]
    fn before_the_walk_marks_are_by_address_until_forgotten() {
        let addr = 0x7f00_0000_1230;
        let mut marks = Marks::default();
        assert!(marks.needs(addr, SERVER));
        assert!(marks.claim(addr, SERVER));
        assert!(!marks.needs(addr, SERVER), "its own converting thread goes through");
        assert!(marks.needs(addr, SWEEPER), "another thread waits");
        marks.settle(addr, true);
        assert!(!marks.needs(addr, SWEEPER));
        assert!(!marks.claim(addr, SWEEPER));
        marks.done.remove(&addr);
        assert!(marks.needs(addr, SWEEPER));
    }
}
