//! The barrier on CPython 3.10 and 3.11: a C-level trace function on every
//! other thread.
//!
//! These versions have no public way to install a hook on another thread,
//! nor to read the one it has. `_PyEval_SetTrace` (exported, declared in
//! `Include/cpython/ceval.h` of both) installs one, as debuggers do; the
//! thread's own trace function is read from its thread state, whose head
//! (`struct _ts`, `Include/cpython/pystate.h`) is laid out below for each
//! version, selected at build time by pyo3's `Py_3_11` cfg. Before trusting
//! it, [`Hooks::install`] checks that the running libpython is the version
//! built for, and that each thread state names our interpreter.
//!
//! Per-opcode events (`f_trace_opcodes` on each thread's current frame) make
//! a thread park before its next instruction rather than its next line.

use std::os::raw::{c_int, c_void};

use pyo3::ffi;
use pyo3::prelude::*;

extern "C" {
    /// Sets the trace function of `tstate`, which may be another thread's.
    /// Requires the GIL.
    fn _PyEval_SetTrace(
        tstate: *mut ffi::PyThreadState,
        func: Option<ffi::Py_tracefunc>,
        arg: *mut ffi::PyObject,
    ) -> c_int;
}

/// The head of CPython 3.11's `struct _ts`, up to the trace hooks.
#[cfg(Py_3_11)]
#[repr(C)]
struct ThreadStateHead {
    prev: *mut c_void,
    next: *mut c_void,
    interp: *mut ffi::PyInterpreterState,
    _initialized: c_int,
    _static: c_int,
    recursion_remaining: c_int,
    recursion_limit: c_int,
    recursion_headroom: c_int,
    tracing: c_int,
    tracing_what: c_int,
    cframe: *mut c_void,
    c_profilefunc: Option<ffi::Py_tracefunc>,
    c_tracefunc: Option<ffi::Py_tracefunc>,
    c_profileobj: *mut ffi::PyObject,
    c_traceobj: *mut ffi::PyObject,
}

/// The head of CPython 3.10's `struct _ts`, up to the trace hooks.
#[cfg(not(Py_3_11))]
#[repr(C)]
struct ThreadStateHead {
    prev: *mut c_void,
    next: *mut c_void,
    interp: *mut ffi::PyInterpreterState,
    frame: *mut c_void,
    recursion_depth: c_int,
    recursion_headroom: c_int,
    stackcheck_counter: c_int,
    tracing: c_int,
    cframe: *mut c_void,
    c_profilefunc: Option<ffi::Py_tracefunc>,
    c_tracefunc: Option<ffi::Py_tracefunc>,
    c_profileobj: *mut ffi::PyObject,
    c_traceobj: *mut ffi::PyObject,
}

/// The trace function installed on other threads during the window.
///
/// # Safety
/// CPython calls it with the GIL held, on the thread being traced, which is
/// never the control thread (whose trace is left alone). It releases the GIL
/// around the wait and takes it back before returning, as any trace function
/// doing blocking I/O does.
unsafe extern "C" fn park(
    _obj: *mut ffi::PyObject,
    frame: *mut ffi::PyFrameObject,
    what: c_int,
    _arg: *mut ffi::PyObject,
) -> c_int {
    let me = ffi::PyThread_get_thread_ident() as u64;
    let returning = if what == ffi::PyTrace_RETURN { frame as usize } else { 0 };
    if !super::passes(me, code_of(frame), returning) {
        let saved = ffi::PyEval_SaveThread();
        super::wait_for_open_gate(me);
        ffi::PyEval_RestoreThread(saved);
    }
    0
}

/// The address of `frame`'s code object, to compare with, or 0.
///
/// # Safety
/// `frame` is the live frame CPython passed a trace function, GIL held.
unsafe fn code_of(frame: *mut ffi::PyFrameObject) -> usize {
    if frame.is_null() {
        return 0;
    }
    let code = ffi::PyFrame_GetCode(frame);
    // A strong reference: the frame keeps the code alive beyond it.
    ffi::Py_XDECREF(code as *mut ffi::PyObject);
    code as usize
}

/// One thread's trace hook as it was before the window.
struct SavedTrace {
    tstate: *mut ffi::PyThreadState,
    func: Option<ffi::Py_tracefunc>,
    /// A strong reference, taken before `_PyEval_SetTrace` drops the
    /// thread's own.
    obj: *mut ffi::PyObject,
}

/// The hooks of one window, removed by [`Hooks::remove`].
pub struct Hooks<'py> {
    saved: Vec<SavedTrace>,
    frames: Vec<(Bound<'py, PyAny>, Bound<'py, PyAny>)>,
}

impl<'py> Hooks<'py> {
    /// Parks every thread in `threads` (all but the caller's) at its next
    /// instruction. On error, whatever was installed is removed again.
    pub fn install(py: Python<'py>, threads: &[*mut ffi::PyThreadState]) -> PyResult<Hooks<'py>> {
        super::check_runtime_version()?;
        // Check our view of the struct before trusting it: each thread
        // state must name our interpreter and have a C frame pointer.
        let interp = unsafe { ffi::PyInterpreterState_Get() };
        for &ts in threads {
            // SAFETY: `ts` comes from the interpreter's thread list, which
            // cannot change while we hold the GIL.
            let head = unsafe { &*(ts as *const ThreadStateHead) };
            if head.interp != interp || head.cframe.is_null() {
                return Err(pyo3::exceptions::PyRuntimeError::new_err(format!(
                    "this CPython's thread state does not have the {} layout pyreload was built for; refusing to stop the world",
                    crate::process::BUILD_PYTHON_VERSION
                )));
            }
        }
        let mut hooks = Hooks {
            saved: Vec::with_capacity(threads.len()),
            frames: Vec::new(),
        };
        for &ts in threads {
            // SAFETY: as above; the saved object gets its own reference so it
            // outlives `_PyEval_SetTrace` dropping the thread's.
            unsafe {
                let head = &*(ts as *const ThreadStateHead);
                let saved = SavedTrace {
                    tstate: ts,
                    func: head.c_tracefunc,
                    obj: head.c_traceobj,
                };
                ffi::Py_XINCREF(saved.obj);
                if _PyEval_SetTrace(ts, Some(park), std::ptr::null_mut()) != 0 {
                    ffi::Py_XDECREF(saved.obj);
                    let err = PyErr::fetch(py);
                    hooks.remove(py);
                    return Err(err);
                }
                hooks.saved.push(saved);
            }
        }
        // Line events would stop a thread at its next line; opcode events
        // stop it at its next instruction, even in the middle of a line.
        if let Err(e) = hooks.trace_opcodes(py) {
            hooks.remove(py);
            return Err(e);
        }
        Ok(hooks)
    }

    fn trace_opcodes(&mut self, py: Python<'py>) -> PyResult<()> {
        let my_ident = unsafe { ffi::PyThread_get_thread_ident() } as u64;
        self.trace_opcodes_of(py, |ident| ident != my_ident)
    }

    /// Asks for opcode events in the current frame of each thread `which`
    /// picks. Their older frames get line events, which every frame gets
    /// from a C-level trace function.
    fn trace_opcodes_of(&mut self, py: Python<'py>, which: impl Fn(u64) -> bool) -> PyResult<()> {
        let current = py.import("sys")?.call_method0("_current_frames")?;
        for item in current.call_method0("items")?.try_iter()? {
            let (ident, frame): (u64, Bound<'py, PyAny>) = item?.extract()?;
            if !which(ident) {
                continue;
            }
            let before = frame.getattr("f_trace_opcodes")?;
            frame.setattr("f_trace_opcodes", true)?;
            self.frames.push((frame, before));
        }
        Ok(())
    }

    /// Makes the threads `idents`, which ran on alone, park at their next
    /// instruction again, in whatever frame they ran into meanwhile.
    pub fn cover(&mut self, py: Python<'py>, idents: &[u64]) -> PyResult<()> {
        self.trace_opcodes_of(py, |ident| idents.contains(&ident))
    }

    /// Gives every thread back exactly the trace function it had, and each
    /// frame its opcode flag (last set first: a frame covered twice gets
    /// the flag it had before the window).
    pub fn remove(&mut self, _py: Python<'py>) {
        for (frame, before) in self.frames.drain(..).rev() {
            let _ = frame.setattr("f_trace_opcodes", before);
        }
        let me = unsafe { ffi::PyThreadState_Get() };
        let live = super::other_thread_states(me);
        for saved in self.saved.drain(..) {
            // SAFETY: we hold the GIL; a thread state is only touched if it
            // is still in the interpreter's list. `_PyEval_SetTrace` takes
            // its own reference to `obj`, so ours is released after.
            unsafe {
                if live.contains(&saved.tstate) {
                    _PyEval_SetTrace(saved.tstate, saved.func, saved.obj);
                }
                ffi::Py_XDECREF(saved.obj);
            }
        }
    }
}
