//! The barrier on CPython 3.12 and later: a `sys.monitoring` tool of
//! pyreload's own (PEP 669).
//!
//! From 3.12 on, `sys.settrace` is itself built on `sys.monitoring` (a
//! reserved tool id), and a debugger or coverage may hold tool ids of their
//! own. pyreload takes a free tool id for the window only and never touches
//! a thread's trace function nor another tool's events, so whatever the
//! program traces with goes on receiving its events. No thread state is
//! read: everything here is public API.
//!
//! The tool asks for two kinds of events:
//! - `PY_START`, `PY_RESUME` and `PY_THROW` everywhere: a thread entering
//!   any Python function, or resuming a generator or coroutine, parks first.
//! - `INSTRUCTION` on the code of every frame on another thread's stack: a
//!   thread that returns from a C call (a recv, a sleep) or gets the GIL
//!   back parks before its next instruction, even in the middle of a line,
//!   as does one unwinding into a caller.
//!
//! The callback cannot tell the events apart per thread, so the control
//! thread's own calls in the window see it too; it returns at once for
//! them (it must not `DISABLE` the event, which would lift it for every
//! thread). An eager migration calls its transformer once per instance in
//! the window, so the callback runs once per instance too. It is therefore
//! a bare C function (`METH_FASTCALL`: no argument tuple, no pyo3
//! trampoline), about 80 instructions a call where a `#[pyfunction]`
//! taking `*args` took about 580 (callgrind, CPython 3.12.1).
//!
//! When the window closes the events are turned off and the tool id is
//! freed; CPython removes the instrumentation from each code object
//! the next time it runs, so outside the window the program runs
//! uninstrumented.

use std::os::raw::c_ulong;
use std::sync::atomic::{AtomicU64, Ordering};

use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::PySet;

/// The tool ids tried, in order: those PEP 669 leaves unassigned first, then
/// the optimizer's, profiler's, coverage's and debugger's, in case the
/// program does not use them.
const TOOL_IDS: [u8; 6] = [3, 4, 5, 2, 1, 0];

/// The thread running the window, as `threading.get_ident()`; its events
/// pass through.
static CONTROL_THREAD: AtomicU64 = AtomicU64::new(0);

/// The callback for every event of the tool, whatever its arguments.
///
/// # Safety
/// CPython calls it with the GIL held, on the thread the event happened on,
/// with the event's code object first in `args`. It releases the GIL around the wait and takes it back before returning,
/// as the 3.10/3.11 trace function does, and returns a new reference to
/// `None` (not `DISABLE`: see the module's header). Nothing in it unwinds.
unsafe extern "C" fn park(
    _slf: *mut ffi::PyObject,
    args: *mut *mut ffi::PyObject,
    nargs: ffi::Py_ssize_t,
) -> *mut ffi::PyObject {
    let me = ffi::PyThread_get_thread_ident() as u64;
    // Every event the tool asks for passes the code object first.
    let code = if nargs > 0 { *args as usize } else { 0 };
    if me != CONTROL_THREAD.load(Ordering::Relaxed) && !super::passes(me, code, 0) {
        let saved = ffi::PyEval_SaveThread();
        super::wait_for_open_gate(me);
        ffi::PyEval_RestoreThread(saved);
    }
    ffi::Py_IncRef(ffi::Py_None());
    ffi::Py_None()
}

/// [`park`]'s method definition; CPython keeps a pointer to it in every
/// callback object made from it, so it lives for the whole process.
struct ParkDef(std::cell::UnsafeCell<ffi::PyMethodDef>);

// SAFETY: never written after initialisation; CPython only reads it.
unsafe impl Sync for ParkDef {}

static PARK_DEF: ParkDef = ParkDef(std::cell::UnsafeCell::new(ffi::PyMethodDef {
    ml_name: c"park".as_ptr(),
    ml_meth: ffi::PyMethodDefPointer { PyCFunctionFast: park },
    ml_flags: ffi::METH_FASTCALL,
    ml_doc: std::ptr::null(),
}));

/// A callable object for [`park`].
fn park_callback(py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
    // SAFETY: `PARK_DEF` is static and describes `park` with the flags it
    // is written for; we hold the GIL. A NULL result has an exception set.
    unsafe { Bound::from_owned_ptr_or_err(py, ffi::PyCFunction_New(PARK_DEF.0.get(), std::ptr::null_mut())) }
}

/// The hooks of one window, removed by [`Hooks::remove`].
pub struct Hooks<'py> {
    monitoring: Bound<'py, PyAny>,
    tool: u8,
    /// The events registered with the callback.
    events: Vec<Bound<'py, PyAny>>,
    /// The code objects given local `INSTRUCTION` events.
    codes: Vec<Bound<'py, PyAny>>,
    /// The same, to look up.
    seen: Bound<'py, PySet>,
}

impl<'py> Hooks<'py> {
    /// Parks every thread but the caller's at its next instruction. On
    /// error, whatever was installed is removed again.
    pub fn install(py: Python<'py>, _threads: &[*mut ffi::PyThreadState]) -> PyResult<Hooks<'py>> {
        super::check_runtime_version()?;
        let monitoring = py.import("sys")?.getattr("monitoring")?;
        let tool = take_tool_id(&monitoring)?;
        // SAFETY: as in `park`.
        let me = unsafe { ffi::PyThread_get_thread_ident() } as c_ulong;
        CONTROL_THREAD.store(me as u64, Ordering::Relaxed);
        let mut hooks = Hooks {
            monitoring,
            tool,
            events: Vec::new(),
            codes: Vec::new(),
            seen: PySet::empty(py)?,
        };
        if let Err(e) = hooks.hook(py, me) {
            hooks.remove(py);
            return Err(e);
        }
        Ok(hooks)
    }

    fn hook(&mut self, py: Python<'py>, me: c_ulong) -> PyResult<()> {
        let events = self.monitoring.getattr("events")?;
        let callback = park_callback(py)?;
        let mut global = 0u32;
        for name in ["PY_START", "PY_RESUME", "PY_THROW", "INSTRUCTION"] {
            let event = events.getattr(name)?;
            self.monitoring
                .call_method1("register_callback", (self.tool, &event, &callback))?;
            if name != "INSTRUCTION" {
                global |= event.extract::<u32>()?;
            }
            self.events.push(event);
        }
        self.monitoring.call_method1("set_events", (self.tool, global))?;
        // Every frame of every other thread, not only the innermost: an
        // exception raised in a C call may unwind into a caller's handler.
        self.instrument_stacks(py, |ident| ident as c_ulong != me)
    }

    /// Gives local `INSTRUCTION` events to the code of every frame on the
    /// stacks of the threads `which` picks.
    fn instrument_stacks(&mut self, py: Python<'py>, which: impl Fn(u64) -> bool) -> PyResult<()> {
        let instruction = self.monitoring.getattr("events")?.getattr("INSTRUCTION")?;
        let current = py.import("sys")?.call_method0("_current_frames")?;
        for item in current.call_method0("items")?.try_iter()? {
            let (ident, frame): (u64, Bound<'py, PyAny>) = item?.extract()?;
            if !which(ident) {
                continue;
            }
            let mut frame = Some(frame);
            while let Some(f) = frame.filter(|f| !f.is_none()) {
                let code = f.getattr("f_code")?;
                if !self.seen.contains(&code)? {
                    self.seen.add(&code)?;
                    self.monitoring
                        .call_method1("set_local_events", (self.tool, &code, &instruction))?;
                    self.codes.push(code);
                }
                frame = Some(f.getattr("f_back")?);
            }
        }
        Ok(())
    }

    /// Makes the threads `idents`, which ran on alone, park at their next
    /// instruction again: the code they ran into meanwhile has no local
    /// events yet (their calls parked nowhere, by design).
    pub fn cover(&mut self, py: Python<'py>, idents: &[u64]) -> PyResult<()> {
        self.instrument_stacks(py, |ident| idents.contains(&ident))
    }

    /// Turns every event of the tool off and frees its id. Another thread's
    /// trace function and other tools were never touched.
    pub fn remove(&mut self, _py: Python<'py>) {
        for code in self.codes.drain(..) {
            let _ = self.monitoring.call_method1("set_local_events", (self.tool, code, 0));
        }
        let _ = self.monitoring.call_method1("set_events", (self.tool, 0));
        for event in self.events.drain(..) {
            let _ = self
                .monitoring
                .call_method1("register_callback", (self.tool, event, _py.None()));
        }
        let _ = self.monitoring.call_method1("free_tool_id", (self.tool,));
    }
}

/// A tool id the program does not use, now pyreload's.
fn take_tool_id(monitoring: &Bound<'_, PyAny>) -> PyResult<u8> {
    for id in TOOL_IDS {
        if monitoring.call_method1("get_tool", (id,))?.is_none() {
            monitoring.call_method1("use_tool_id", (id, "pyreload"))?;
            return Ok(id);
        }
    }
    Err(pyo3::exceptions::PyRuntimeError::new_err(
        "every sys.monitoring tool id (0 to 5) is in use by the program, so pyreload cannot stop its threads; free one with sys.monitoring.free_tool_id",
    ))
}
