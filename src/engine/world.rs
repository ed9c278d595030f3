//! Stopping the world for the commit window.
//!
//! The merge itself runs no bytecode under one GIL hold, so no other thread
//! can observe it half-done. But the window also runs Python code on the
//! control thread: the `[safe_point] condition` and `[check] after`. The
//! interpreter hands the GIL to any thread that has waited a switch interval
//! (5 ms), so without more care another thread could run in the middle.
//!
//! [`StoppedWorld`] closes that gap. For the window only, it installs a
//! C-level trace function on every other thread (`_PyEval_SetTrace`, the
//! mechanism debuggers use) and turns on per-opcode events in each thread's
//! current frame. A thread that gets the GIL during the window therefore
//! parks before its next bytecode instruction, releasing the GIL, until the
//! window ends. A thread blocked in C (accept, recv, sleep) stays blocked.
//! When it returns it parks as soon as it reaches bytecode. On leaving, each
//! thread gets back exactly the trace function it had (a debugger's or
//! coverage's), and each frame its opcode flag. Outside the window no hook is
//! installed, so the program pays nothing.
//!
//! This is the only module that reads CPython's thread-state struct. It does
//! so for CPython 3.11, whose layout it checks at run time. Other versions
//! are refused at build time rather than guessed at.

use std::os::raw::{c_int, c_ulong, c_void};
use std::sync::{Condvar, Mutex};

use pyo3::ffi;
use pyo3::prelude::*;

#[cfg(not(all(Py_3_11, not(Py_3_12))))]
compile_error!("pyreload's stop-the-world barrier reads CPython 3.11's thread state; build with a CPython 3.11 python3 (PYO3_PYTHON)");

extern "C" {
    /// Exported by CPython 3.11 (`Include/cpython/ceval.h`): sets the trace
    /// function of `tstate`, which may be another thread's. Requires the GIL.
    fn _PyEval_SetTrace(
        tstate: *mut ffi::PyThreadState,
        func: Option<ffi::Py_tracefunc>,
        arg: *mut ffi::PyObject,
    ) -> c_int;
}

/// The head of CPython 3.11's `struct _ts` (Include/cpython/pystate.h), up
/// to the trace hooks. Only read, to save a thread's own trace function.
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

/// Open or closed; parked threads wait on the condvar while it is closed.
struct Gate {
    closed: Mutex<bool>,
    opened: Condvar,
}

static GATE: Gate = Gate {
    closed: Mutex::new(false),
    opened: Condvar::new(),
};

fn gate_closed() -> std::sync::MutexGuard<'static, bool> {
    GATE.closed.lock().unwrap_or_else(|p| p.into_inner())
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
    _frame: *mut ffi::PyFrameObject,
    _what: c_int,
    _arg: *mut ffi::PyObject,
) -> c_int {
    let saved = ffi::PyEval_SaveThread();
    {
        let mut closed = gate_closed();
        while *closed {
            closed = GATE.opened.wait(closed).unwrap_or_else(|p| p.into_inner());
        }
    }
    ffi::PyEval_RestoreThread(saved);
    0
}

/// The switch interval during the window, in seconds: longer than any
/// commit, so the control thread is never asked to hand the GIL round.
const WINDOW_SWITCH_INTERVAL_S: f64 = 1.0;

/// The switch interval the watchdog asks for inside the window, in
/// microseconds, so that its request for the GIL is granted promptly.
const HURRIED_SWITCH_US: c_ulong = 1_000;

extern "C" {
    /// Exported by CPython 3.11 (`Include/cpython/ceval.h`); what
    /// `sys.setswitchinterval` calls. A plain store, safe without the GIL.
    fn _PyEval_SetSwitchInterval(microseconds: c_ulong);
}

/// Who has changed the interpreter's switch interval. The window sets a
/// long one and puts the program's back at its end; inside it, the
/// watchdog may shorten it for a moment. The lock orders the three, so the
/// program's own interval is the one restored, always.
struct Switch {
    in_window: bool,
    hurried: bool,
}

static SWITCH: Mutex<Switch> = Mutex::new(Switch {
    in_window: false,
    hurried: false,
});

fn switch() -> std::sync::MutexGuard<'static, Switch> {
    SWITCH.lock().unwrap_or_else(|p| p.into_inner())
}

/// For the watchdog, without the GIL: if the world is stopped, shortens
/// the switch interval so that a thread waiting for the GIL gets it within
/// about a millisecond, instead of the window's second.
pub fn hurry_switch() {
    let mut s = switch();
    if s.in_window {
        // SAFETY: a plain store of the interval, as sys.setswitchinterval does.
        unsafe { _PyEval_SetSwitchInterval(HURRIED_SWITCH_US) };
        s.hurried = true;
    }
}

/// Undoes [`hurry_switch`], if the same window is still open.
pub fn unhurry_switch() {
    let mut s = switch();
    if s.in_window && s.hurried {
        // SAFETY: as above.
        unsafe { _PyEval_SetSwitchInterval((WINDOW_SWITCH_INTERVAL_S * 1e6) as c_ulong) };
    }
    s.hurried = false;
}

/// One thread's trace hook as it was before the window.
struct SavedTrace {
    tstate: *mut ffi::PyThreadState,
    func: Option<ffi::Py_tracefunc>,
    /// A strong reference, taken before `_PyEval_SetTrace` drops the
    /// thread's own.
    obj: *mut ffi::PyObject,
}

/// While this value lives, no other thread executes bytecode. Dropping it
/// restores every thread's tracing state and lets them go.
pub struct StoppedWorld<'py> {
    sys: Bound<'py, PyAny>,
    /// The switch interval to restore.
    switch_interval: Bound<'py, PyAny>,
    saved: Vec<SavedTrace>,
    frames: Vec<(Bound<'py, PyAny>, Bound<'py, PyAny>)>,
    /// How many threads other than ours were stopped.
    pub threads: usize,
}

impl<'py> StoppedWorld<'py> {
    /// Stops every thread other than the caller's.
    pub fn stop(py: Python<'py>) -> PyResult<StoppedWorld<'py>> {
        let me = unsafe { ffi::PyThreadState_Get() };
        let threads = other_thread_states(me);
        // Check our view of the struct before trusting it: each thread
        // state must name our interpreter and be linked to its neighbour.
        let interp = unsafe { ffi::PyInterpreterState_Get() };
        for &ts in &threads {
            // SAFETY: `ts` comes from the interpreter's thread list, which
            // cannot change while we hold the GIL.
            let head = unsafe { &*(ts as *const ThreadStateHead) };
            if head.interp != interp || head.cframe.is_null() {
                return Err(pyo3::exceptions::PyRuntimeError::new_err(
                    "this CPython's thread state does not have the 3.11 layout pyreload expects; refusing to stop the world",
                ));
            }
        }
        // Every other thread that gets the GIL during the window parks at
        // once, so nothing needs the GIL handed round on a timer. Waiters
        // that time out would still ask for it, and with many threads those
        // hand-offs (each one only to park again) add up to a longer pause.
        let sys = py.import("sys")?.into_any();
        let switch_interval = {
            let mut s = switch();
            let before = sys.call_method0("getswitchinterval")?;
            sys.call_method1("setswitchinterval", (WINDOW_SWITCH_INTERVAL_S,))?;
            s.in_window = true;
            s.hurried = false;
            before
        };
        *gate_closed() = true;
        let mut world = StoppedWorld {
            sys,
            switch_interval,
            saved: Vec::with_capacity(threads.len()),
            frames: Vec::new(),
            threads: threads.len(),
        };
        for ts in threads {
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
                    return Err(PyErr::fetch(py));
                }
                world.saved.push(saved);
            }
        }
        // Line events would stop a thread at its next line; opcode events
        // stop it at its next instruction, even in the middle of a line.
        let current = py.import("sys")?.call_method0("_current_frames")?;
        let my_ident = unsafe { ffi::PyThread_get_thread_ident() };
        for item in current.call_method0("items")?.try_iter()? {
            let (ident, frame): (u64, Bound<'py, PyAny>) = item?.extract()?;
            if ident as std::os::raw::c_ulong == my_ident {
                continue;
            }
            let before = frame.getattr("f_trace_opcodes")?;
            frame.setattr("f_trace_opcodes", true)?;
            world.frames.push((frame, before));
        }
        Ok(world)
    }
}

impl Drop for StoppedWorld<'_> {
    fn drop(&mut self) {
        for (frame, before) in self.frames.drain(..) {
            let _ = frame.setattr("f_trace_opcodes", before);
        }
        let me = unsafe { ffi::PyThreadState_Get() };
        let live = other_thread_states(me);
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
        *gate_closed() = false;
        GATE.opened.notify_all();
        let mut s = switch();
        let _ = self.sys.call_method1("setswitchinterval", (&self.switch_interval,));
        s.in_window = false;
        s.hurried = false;
    }
}

/// Removes a class's own `__new__` and makes the class create instances as
/// its base does again.
///
/// Deleting `__new__` from a heap type leaves its `tp_new` slot pointing at
/// the generic `slot_tp_new` (CPython's `update_one_slot` keeps the type's
/// current `tp_new` when the MRO yields `object.__new__`), after which
/// `Cls(arg)` fails with "object.__new__() takes exactly one argument". A
/// lazy migration's `__new__` hook, removed again, must not leave that
/// behind, so the slot is reset to the base's, as class creation sets it.
pub fn remove_own_new(class: &Bound<'_, PyAny>) -> PyResult<()> {
    class.delattr("__new__")?;
    let class = class.cast::<pyo3::types::PyType>()?;
    // SAFETY: `class` is a live type object and we hold the GIL; `tp_base`
    // of a heap type is set (at least `object`). Writing `tp_new` is what
    // `inherit_special` does when the class is created, and
    // `PyType_Modified` invalidates the type's caches afterwards.
    unsafe {
        let tp = class.as_type_ptr();
        let base = (*tp).tp_base;
        if !base.is_null() {
            (*tp).tp_new = (*base).tp_new;
            ffi::PyType_Modified(tp);
        }
    }
    Ok(())
}

/// Every thread state of the current interpreter except `me`.
fn other_thread_states(me: *mut ffi::PyThreadState) -> Vec<*mut ffi::PyThreadState> {
    let mut out = Vec::new();
    // SAFETY: called with the GIL held, so the list is stable.
    unsafe {
        let mut ts = ffi::PyInterpreterState_ThreadHead(ffi::PyInterpreterState_Get());
        while !ts.is_null() {
            if ts != me {
                out.push(ts);
            }
            ts = ffi::PyThreadState_Next(ts);
        }
    }
    out
}
