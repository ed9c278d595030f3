//! Stopping the world for the commit window.
//!
//! The merge itself runs no bytecode under one GIL hold, so no other thread
//! can observe it half-done. But the window also runs Python code on the
//! control thread: the `[safe_point] condition` and `[check] after`. The
//! interpreter hands the GIL to any thread that has waited a switch interval
//! (5 ms), so without more care another thread could run in the middle.
//!
//! [`StoppedWorld`] closes that gap. For the window only, it hooks every
//! other thread so that a thread that gets the GIL parks before its next
//! bytecode instruction, releasing the GIL, until the window ends. A thread
//! blocked in C (accept, recv, sleep) stays blocked. When it returns it parks
//! as soon as it reaches bytecode. Outside the window no hook is installed,
//! so the program pays nothing.
//!
//! How a thread is hooked depends on the CPython version, chosen at build
//! time (pyo3's `Py_3_*` cfgs) and checked against the running libpython at
//! run time ([`check_runtime_version`]):
//! - 3.10 and 3.11 ([`trace_hook`]): a C-level trace function on each other
//!   thread (`_PyEval_SetTrace`, the mechanism debuggers use), read from and
//!   restored into the thread state, the one CPython struct pyreload reads.
//! - 3.12 and later ([`monitoring`]): a `sys.monitoring` tool of its own
//!   (PEP 669), which leaves every thread's trace function and every other
//!   tool alone. Nothing internal is read.
//!
//! Either way, on leaving, each thread's own tracer (a debugger's or
//! coverage's) is the one it had.

use std::os::raw::c_ulong;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex};

use pyo3::ffi;
use pyo3::prelude::*;

use crate::process::per_process::PerProcess;

#[cfg(not(Py_3_10))]
compile_error!("pyreload supports CPython 3.10 and later; build with such a python3 (PYO3_PYTHON)");

#[cfg(Py_3_12)]
mod monitoring;
#[cfg(Py_3_12)]
use monitoring::Hooks;
#[cfg(not(Py_3_12))]
mod trace_hook;
#[cfg(not(Py_3_12))]
use trace_hook::Hooks;

/// Open or closed; parked threads wait on the condvar while it is closed.
struct Gate {
    closed: Mutex<bool>,
    opened: Condvar,
}

/// Per process: a program thread parks on it without the GIL, so a child
/// forked while one was parked (or passing) must get its own.
static GATE: PerProcess<Gate> = PerProcess::new(|| Gate {
    closed: Mutex::new(false),
    opened: Condvar::new(),
});

fn gate_closed() -> std::sync::MutexGuard<'static, bool> {
    GATE.get().closed.lock().unwrap_or_else(|p| p.into_inner())
}

/// Where a hooked thread waits, without the GIL, until the window ends
/// or the thread is let run alone ([`StoppedWorld::let_run`]). `me` is its
/// `threading.get_ident()`.
fn wait_for_open_gate(me: u64) {
    let mut closed = gate_closed();
    while *closed && !runs_alone(me) {
        closed = GATE.get().opened.wait(closed).unwrap_or_else(|p| p.into_inner());
    }
}

/// How many threads the stopped world lets run on alone at most: a look
/// blocked by more is not worth holding every other thread for.
const MAX_ALONE: usize = 4;

/// A thread the stopped world lets run on alone ([`StoppedWorld::let_run`]).
struct Alone {
    /// Its `threading.get_ident()`.
    ident: u64,
    /// The code objects (addresses) of the frames that called the
    /// functions it blocks in: once it runs an instruction in one of them
    /// it has left those functions, and parks.
    callers: Vec<usize>,
    /// The outermost frame object (address) it blocks in: on 3.10 and 3.11
    /// the trace function hears that frame return, and parks the thread at
    /// its very next event (a caller's next line may come much later).
    frame: usize,
    /// That frame has returned: the next event parks.
    leaving: bool,
    /// Back in a caller, and parked.
    returned: bool,
}

/// How many threads run alone now: the hooks read it on every event of
/// the window, and only take [`ALONE`]'s lock when it is not 0.
static ALONE_COUNT: AtomicUsize = AtomicUsize::new(0);

/// The threads let run alone, and the stopped world's thread waiting for
/// them to return. Per process: a child forked by one of them starts with
/// none.
static ALONE: PerProcess<(Mutex<Vec<Alone>>, Condvar)> = PerProcess::new(|| (Mutex::new(Vec::new()), Condvar::new()));

fn alone() -> std::sync::MutexGuard<'static, Vec<Alone>> {
    ALONE.get().0.lock().unwrap_or_else(|p| p.into_inner())
}

/// For the stopped world's thread, without the GIL: waits up to `timeout`
/// for every thread let run alone to be back in a caller (about to park,
/// letting the GIL go). A thread that left the blocking functions without
/// yet running a caller's instruction (on 3.10 and 3.11 a caller parks it
/// at its next line) is seen by the look after the timeout.
pub fn wait_for_alone_to_return(timeout: std::time::Duration) {
    let list = alone();
    let _ = ALONE
        .get()
        .1
        .wait_timeout_while(list, timeout, |list| list.iter().any(|a| !a.returned))
        .unwrap_or_else(|p| p.into_inner());
}

/// Whether the thread `ident` runs on alone in the stopped world (and has
/// not yet returned to a caller of the functions it blocked in).
fn runs_alone(ident: u64) -> bool {
    ALONE_COUNT.load(Ordering::Acquire) != 0 && alone().iter().any(|a| a.ident == ident && !a.returned)
}

/// For a hook, on an event of thread `ident` in the code object `code`
/// (with the GIL; `returning` is the frame a return event is for, else 0):
/// true if the thread runs on alone, still inside the functions it blocked
/// in; false if it must park, as every other thread does. A thread let run
/// alone that is back in one of their callers, or whose outermost blocking
/// frame has returned, is marked returned and parks from now on.
fn passes(ident: u64, code: usize, returning: usize) -> bool {
    if ALONE_COUNT.load(Ordering::Acquire) == 0 {
        return false;
    }
    let mut alone = alone();
    match alone.iter_mut().find(|a| a.ident == ident && !a.returned) {
        Some(a) if a.leaving || a.callers.contains(&code) => {
            a.returned = true;
            ALONE.get().1.notify_all();
            false
        }
        Some(a) => {
            if returning != 0 && returning == a.frame {
                a.leaving = true;
            }
            true
        }
        None => false,
    }
}

/// Refuses to hook threads if the running libpython is not the `major.minor`
/// pyreload was built for: the hooks are chosen for that version, and on
/// 3.10 and 3.11 its thread-state layout is read. The host already refuses
/// to start on another version; this keeps the one module that depends on
/// it from trusting that.
fn check_runtime_version() -> PyResult<()> {
    // SAFETY: Py_GetVersion returns a static NUL-terminated string.
    let running = unsafe { std::ffi::CStr::from_ptr(ffi::Py_GetVersion()) }.to_string_lossy();
    let built = crate::process::BUILD_PYTHON_VERSION;
    let matches = running
        .strip_prefix(built)
        .is_some_and(|rest| rest.starts_with(|c: char| !c.is_ascii_digit()));
    if matches {
        Ok(())
    } else {
        Err(pyo3::exceptions::PyRuntimeError::new_err(format!(
            "pyreload was built for CPython {built} but runs on CPython {running}; refusing to stop the world"
        )))
    }
}

/// The switch interval during the window, in seconds: longer than any
/// commit, so the control thread is never asked to hand the GIL round.
#[cfg(not(Py_3_12))]
const WINDOW_SWITCH_INTERVAL_S: f64 = 1.0;
/// From 3.12 the watchdog cannot shorten the interval without the GIL (see
/// [`set_switch_interval_now`]) and must wait one out to get it; so the
/// window's is shorter, and bounds that wait.
#[cfg(Py_3_12)]
const WINDOW_SWITCH_INTERVAL_S: f64 = 0.05;

/// The switch interval the watchdog asks for inside the window, in
/// microseconds, so that its request for the GIL is granted promptly.
#[cfg(not(Py_3_12))]
const HURRIED_SWITCH_US: c_ulong = 1_000;

#[cfg(not(Py_3_12))]
extern "C" {
    /// Exported by CPython 3.10 and 3.11 (`Include/cpython/ceval.h`); what
    /// `sys.setswitchinterval` calls. There a plain store into the one
    /// runtime-wide GIL, safe without the GIL.
    fn _PyEval_SetSwitchInterval(microseconds: c_ulong);
}

/// Sets the switch interval without the GIL, where the version allows it.
#[cfg(not(Py_3_12))]
fn set_switch_interval_now(microseconds: c_ulong) {
    // SAFETY: a plain store of the interval, as sys.setswitchinterval does.
    unsafe { _PyEval_SetSwitchInterval(microseconds) }
}

/// From 3.12 each interpreter has its own GIL, and
/// `_PyEval_SetSwitchInterval` finds it through the calling thread's state
/// (a fatal error without one); 3.13 no longer exports it. So nothing is
/// done here, and the window's interval is short instead.
#[cfg(Py_3_12)]
fn set_switch_interval_now(_microseconds: c_ulong) {}

#[cfg(Py_3_12)]
const HURRIED_SWITCH_US: c_ulong = 0;

/// Who has changed the interpreter's switch interval. The window sets a
/// long one and puts the program's back at its end; inside it, the
/// watchdog may shorten it for a moment. The lock orders the three, so the
/// program's own interval is the one restored, always.
struct Switch {
    in_window: bool,
    hurried: bool,
}

/// Per process: the watchdog takes it without the GIL.
static SWITCH: PerProcess<Mutex<Switch>> = PerProcess::new(|| {
    Mutex::new(Switch {
        in_window: false,
        hurried: false,
    })
});

fn switch() -> std::sync::MutexGuard<'static, Switch> {
    SWITCH.get().lock().unwrap_or_else(|p| p.into_inner())
}

/// For the watchdog, without the GIL: if the world is stopped, shortens
/// the switch interval so that a thread waiting for the GIL gets it within
/// about a millisecond, instead of the window's second.
pub fn hurry_switch() {
    let mut s = switch();
    if s.in_window {
        set_switch_interval_now(HURRIED_SWITCH_US);
        s.hurried = true;
    }
}

/// Undoes [`hurry_switch`], if the same window is still open.
pub fn unhurry_switch() {
    let mut s = switch();
    if s.in_window && s.hurried {
        set_switch_interval_now((WINDOW_SWITCH_INTERVAL_S * 1e6) as c_ulong);
    }
    s.hurried = false;
}

/// The switch interval while a tree member waits for its commit, in
/// seconds: the commit rings for every member at once, and each one's
/// control thread then needs the GIL from whichever program thread holds
/// it. At the default 5 ms, that wait alone spread the members' commits
/// over several milliseconds on a busy machine.
const AWAITING_COMMIT_SWITCH_INTERVAL_S: f64 = 0.0002;

/// While this value lives, a thread that asks for the GIL gets it within
/// [`AWAITING_COMMIT_SWITCH_INTERVAL_S`]; dropping it puts the program's
/// own interval back. Held, with the GIL, from a member's `Staged` until
/// the commit reaches it (usually milliseconds; at most the spec's
/// `timeout_ms`), and dropped before anything else runs.
pub struct QuickHandoff<'py> {
    sys: Bound<'py, PyAny>,
    before: Bound<'py, PyAny>,
}

/// The program's own switch interval (its `f64` bits) while a
/// [`QuickHandoff`] lives, else 0. A process forked meanwhile (a worker
/// the master spawns while it waits for its commit) inherits the short
/// interval but not the value that would put it back:
/// [`after_fork_in_child`] does.
static HANDOFF_BEFORE: AtomicU64 = AtomicU64::new(0);

impl<'py> QuickHandoff<'py> {
    pub fn begin(py: Python<'py>) -> PyResult<QuickHandoff<'py>> {
        let sys = py.import("sys")?.into_any();
        let _s = switch();
        let before = sys.call_method0("getswitchinterval")?;
        let program = before.extract::<f64>()?;
        if program > AWAITING_COMMIT_SWITCH_INTERVAL_S {
            HANDOFF_BEFORE.store(program.to_bits(), Ordering::SeqCst);
            sys.call_method1("setswitchinterval", (AWAITING_COMMIT_SWITCH_INTERVAL_S,))?;
        }
        Ok(QuickHandoff { sys, before })
    }
}

impl Drop for QuickHandoff<'_> {
    fn drop(&mut self) {
        let _s = switch();
        let _ = self.sys.call_method1("setswitchinterval", (&self.before,));
        HANDOFF_BEFORE.store(0, Ordering::SeqCst);
    }
}

/// In a child just forked (GIL held): gives it back the program's switch
/// interval if its parent forked it while waiting for a commit, so that
/// the worker does not hand its GIL round every 0.2 ms for the rest of
/// its life.
pub fn after_fork_in_child(py: Python<'_>) {
    let bits = HANDOFF_BEFORE.swap(0, Ordering::SeqCst);
    if bits != 0 {
        let restored = py
            .import("sys")
            .and_then(|sys| sys.call_method1("setswitchinterval", (f64::from_bits(bits),)));
        if let Err(e) = restored {
            crate::process::log(format!(
                "pyreload: pid {}: could not restore the switch interval after the fork: {e}",
                std::process::id()
            ));
        }
    }
}

/// While this value lives, no other thread executes bytecode. Dropping it
/// removes the hooks and lets them go.
pub struct StoppedWorld<'py> {
    py: Python<'py>,
    sys: Bound<'py, PyAny>,
    /// The switch interval to restore.
    switch_interval: Bound<'py, PyAny>,
    hooks: Option<Hooks<'py>>,
    /// The program's collector, paused while threads run alone (see
    /// [`StoppedWorld::let_run`]) if it was enabled.
    paused_gc: Option<Bound<'py, PyAny>>,
    /// How many threads other than ours were stopped.
    pub threads: usize,
}

impl<'py> StoppedWorld<'py> {
    /// Stops every thread other than the caller's.
    pub fn stop(py: Python<'py>) -> PyResult<StoppedWorld<'py>> {
        let me = unsafe { ffi::PyThreadState_Get() };
        let threads = other_thread_states(me);
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
            py,
            sys,
            switch_interval,
            hooks: None,
            paused_gc: None,
            threads: threads.len(),
        };
        // On error, dropping `world` opens the gate and restores the interval.
        world.hooks = Some(Hooks::install(py, &threads)?);
        Ok(world)
    }
}

impl StoppedWorld<'_> {
    /// Lets the threads `alone` (ident, the outermost frame each blocks in,
    /// and the code objects of the frames that called it) run on while every other
    /// thread stays parked, each until it is back in one of those callers
    /// or [`StoppedWorld::stop_again`]: threads the safe-point look found
    /// inside a function the update replaces get to leave it without the
    /// whole program running meanwhile. False, and nothing done, for more
    /// than a few threads.
    pub fn let_run(&mut self, alone: &[(u64, usize, Vec<usize>)]) -> PyResult<bool> {
        if alone.is_empty() || alone.len() > MAX_ALONE {
            return Ok(false);
        }
        // No collection while they run: one would hold the GIL, and with
        // it the stopped world, for milliseconds (measured: a look 6 ms
        // late under load). The program's own collections resume after.
        let gc = self.py.import("gc")?;
        if gc.call_method0("isenabled")?.is_truthy()? {
            gc.call_method0("disable")?;
            self.paused_gc = Some(gc.into_any());
        }
        self.sys.call_method1("setswitchinterval", (ALONE_SWITCH_INTERVAL_S,))?;
        {
            // The gate's lock first, so a thread between its look at the
            // gate and its wait cannot miss the wake-up.
            let _gate = gate_closed();
            let mut list = self::alone();
            list.clear();
            list.extend(alone.iter().map(|(ident, frame, callers)| Alone {
                ident: *ident,
                callers: callers.clone(),
                frame: *frame,
                leaving: false,
                returned: false,
            }));
            ALONE_COUNT.store(list.len(), Ordering::Release);
        }
        GATE.get().opened.notify_all();
        Ok(true)
    }

    /// Whether every thread let run alone is back in a caller (and parked,
    /// or about to park): looking again is all that is left to do.
    pub fn all_returned(&self) -> bool {
        alone().iter().all(|a| a.returned)
    }

    /// Parks again the threads [`StoppedWorld::let_run`] let go, at their
    /// next instruction, wherever they ran to meanwhile. Called with the
    /// GIL, so none of them is running bytecode now.
    pub fn stop_again(&mut self) -> PyResult<()> {
        let idents: Vec<u64> = {
            let _gate = gate_closed();
            let mut list = alone();
            ALONE_COUNT.store(0, Ordering::Release);
            list.drain(..).map(|a| a.ident).collect()
        };
        if let Some(gc) = self.paused_gc.take() {
            gc.call_method0("enable")?;
        }
        self.sys
            .call_method1("setswitchinterval", (WINDOW_SWITCH_INTERVAL_S,))?;
        match self.hooks.as_mut() {
            Some(hooks) => hooks.cover(self.py, &idents),
            None => Ok(()),
        }
    }
}

/// The switch interval while threads run alone in the stopped world, in
/// seconds: the control thread takes the GIL back this often to look
/// whether they have left the blocking functions.
const ALONE_SWITCH_INTERVAL_S: f64 = 0.000_05;

impl Drop for StoppedWorld<'_> {
    fn drop(&mut self) {
        ALONE_COUNT.store(0, Ordering::Release);
        alone().clear();
        if let Some(gc) = self.paused_gc.take() {
            let _ = gc.call_method0("enable");
        }
        if let Some(mut hooks) = self.hooks.take() {
            hooks.remove(self.py);
        }
        *gate_closed() = false;
        GATE.get().opened.notify_all();
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
