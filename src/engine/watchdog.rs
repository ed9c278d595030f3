//! Deadlines for the update's own Python code.
//!
//! An update runs code the user wrote: new module bodies in staging, the
//! safe-point condition, transformers and `[check] after` in the stopped
//! world. Any of it may loop forever. With the world stopped, that would
//! hang the whole program, and the gate would refuse every later update.
//!
//! While a [`Deadline`] is armed, one watchdog thread sleeps until it
//! passes. If the control thread is still inside the update then, the
//! watchdog raises [`UpdateTimeout`] in it, with
//! `PyThreadState_SetAsyncExc`: the exception surfaces at the next bytecode
//! instruction the control thread runs, the update fails there, and the
//! engine refuses it or rolls it back as for any other error. If the code
//! catches the exception and goes on, it is raised again every
//! [`REPEAT`]. Code blocked inside a C call (a sleep, a lock) sees the
//! exception only when that call returns.
//!
//! `UpdateTimeout` derives from `BaseException`, like `KeyboardInterrupt`,
//! so an `except Exception:` in a transformer does not swallow it. Disarming
//! clears an exception raised but not yet delivered, so it can never
//! surface later, in the rollback or in the program.

use std::os::raw::{c_long, c_ulong};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use pyo3::ffi;
use pyo3::prelude::*;

use crate::process::per_process::PerProcess;

pyo3::create_exception!(
    pyreload,
    UpdateTimeout,
    pyo3::exceptions::PyBaseException,
    "Raised in an update's own code (a module body, a condition, a transformer or a check) that ran past its deadline."
);

/// How often an exception the code swallowed is raised again.
const REPEAT: Duration = Duration::from_millis(100);

struct Armed {
    /// The thread to interrupt, as `threading.get_ident()`.
    thread: c_ulong,
    deadline: Instant,
    /// Told apart from a later arming of the same thread.
    generation: u64,
    fired: u32,
}

struct Shared {
    armed: Option<Armed>,
    generation: u64,
    /// Asks an idle watchdog thread to end (see [`pause_for_fork`]).
    stop: bool,
    /// When the watchdog thread, waiting, will look again by itself
    /// (`None`: not until told). Arming wakes it only if that is later
    /// than the new deadline: each wake-up is a thread the scheduler must
    /// run, beside the commit, on a busy machine.
    looks_at: Option<Instant>,
}

/// The watchdog of one process. Per process ([`PerProcess`]): a child
/// forked from the program has no watchdog thread, whatever its parent's
/// `thread` flag says, and must not wait on locks that thread held.
struct Watchdog {
    shared: Mutex<Shared>,
    changed: Condvar,
    /// Held by the watchdog from deciding to interrupt until it has let go
    /// of the GIL again. Disarming waits for it, so the watchdog never
    /// attaches to an interpreter after the update (and its hold on the
    /// exit) has ended.
    firing: Mutex<()>,
    /// The watchdog thread, while it runs in this process. Only touched
    /// with the GIL held (arming, and the fork hooks).
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

static WATCHDOG: PerProcess<Watchdog> = PerProcess::new(|| Watchdog {
    shared: Mutex::new(Shared {
        armed: None,
        generation: 0,
        stop: false,
        looks_at: None,
    }),
    changed: Condvar::new(),
    firing: Mutex::new(()),
    thread: Mutex::new(None),
});

/// Before a fork (the `before` hook, GIL held), on CPython 3.12 (see `host::fork::before` for 3.13):
/// ends the watchdog thread if it is idle, so that `os.fork()` in the
/// program does not warn that the process is multi-threaded when `python`
/// would not. The next deadline starts it again. An armed watchdog (an
/// update running its own code, which forked) is left alone.
#[cfg_attr(not(all(Py_3_12, not(Py_3_13))), allow(dead_code))] // used by the 3.12 fork hooks
pub fn pause_for_fork() {
    let Ok(mut thread) = wd().thread.try_lock() else { return };
    let Some(handle) = thread.take() else { return };
    match wd().shared.try_lock() {
        Ok(mut s) if s.armed.is_none() => {
            s.stop = true;
            wd().changed.notify_all();
        }
        _ => {
            *thread = Some(handle);
            return;
        }
    }
    let _ = handle.join();
}

fn wd() -> &'static Watchdog {
    WATCHDOG.get()
}

fn shared() -> MutexGuard<'static, Shared> {
    wd().shared.lock().unwrap_or_else(|p| p.into_inner())
}

/// An armed deadline for the calling thread's Python code. Dropping it
/// disarms, and must happen with the GIL held (it may clear a pending
/// exception).
pub struct Deadline<'py> {
    py: Python<'py>,
    generation: u64,
}

impl<'py> Deadline<'py> {
    /// Arms a deadline for the calling thread, which must be attached.
    pub fn arm(py: Python<'py>, deadline: Instant) -> Deadline<'py> {
        {
            let mut thread = wd().thread.lock().unwrap_or_else(|p| p.into_inner());
            if thread.is_none() {
                *thread = Some(
                    crate::process::try_spawn_service_thread("pyreload-watchdog", watch)
                        .unwrap_or_else(|e| panic!("could not start pyreload-watchdog: {e}")),
                );
            }
        }
        // SAFETY: a plain C call that returns the calling thread's id.
        let thread = unsafe { ffi::PyThread_get_thread_ident() };
        let mut s = shared();
        s.generation += 1;
        let generation = s.generation;
        s.armed = Some(Armed {
            thread,
            deadline,
            generation,
            fired: 0,
        });
        if s.looks_at.is_none_or(|at| at > deadline) {
            wd().changed.notify_all();
        }
        Deadline { py, generation }
    }

    /// How many times the watchdog interrupted the code so far.
    pub fn fired(&self) -> u32 {
        match &shared().armed {
            Some(a) if a.generation == self.generation => a.fired,
            _ => 0,
        }
    }
}

impl Drop for Deadline<'_> {
    fn drop(&mut self) {
        // The watchdog may be waiting for the GIL to interrupt us: then let
        // it have it, and wait until it is done. Otherwise keep the GIL: in
        // the stopped world no other thread may take it.
        let _firing = loop {
            match wd().firing.try_lock() {
                Ok(guard) => break guard,
                Err(std::sync::TryLockError::Poisoned(p)) => break p.into_inner(),
                Err(std::sync::TryLockError::WouldBlock) => self
                    .py
                    .detach(|| drop(wd().firing.lock().unwrap_or_else(|p| p.into_inner()))),
            }
        };
        let mut s = shared();
        if let Some(a) = s.armed.take_if(|a| a.generation == self.generation) {
            if a.fired > 0 {
                // SAFETY: we hold the GIL (`self.py`); a NULL exception
                // clears any async exception still pending for the thread.
                unsafe { ffi::PyThreadState_SetAsyncExc(a.thread as c_long, std::ptr::null_mut()) };
            }
        }
        // Not woken: it finds nothing armed when it next looks, by itself.
    }
}

/// The watchdog thread: sleeps without the GIL until an armed deadline
/// passes, then interrupts.
fn watch() {
    let mut s = shared();
    loop {
        let due = s.armed.as_ref().map(|a| (a.generation, a.deadline));
        if due.is_none() && s.stop {
            s.stop = false;
            return;
        }
        match due {
            None => {
                s.looks_at = None;
                s = wd().changed.wait(s).unwrap_or_else(|p| p.into_inner());
            }
            Some((generation, deadline)) => {
                let now = Instant::now();
                if now < deadline {
                    s.looks_at = Some(deadline);
                    s = wd()
                        .changed
                        .wait_timeout(s, deadline - now)
                        .unwrap_or_else(|p| p.into_inner())
                        .0;
                    continue;
                }
                // Never wait for the GIL while holding the lock: the control
                // thread disarms with the GIL held.
                s.looks_at = Some(now);
                drop(s);
                {
                    let _firing = wd().firing.lock().unwrap_or_else(|p| p.into_inner());
                    // Disarming holds FIRING, so if the deadline is still
                    // armed now, the update cannot end until we are done.
                    let armed = shared().armed.as_ref().is_some_and(|a| a.generation == generation);
                    if armed {
                        interrupt(generation);
                    }
                }
                s = shared();
            }
        }
    }
}

/// How many [`HoldFire`]s are alive: while any is, the watchdog does not
/// interrupt, it only looks again a [`REPEAT`] later.
static HOLDING: AtomicUsize = AtomicUsize::new(0);

/// While alive, pyreload's own Python code runs on the control thread (it
/// describes an error the update's code raised, which may import
/// `traceback`'s dependencies privately, for longer than [`REPEAT`] on a
/// first use), and must not be interrupted half-way: an exception there
/// could leave those private imports in the program's `sys.modules`.
pub struct HoldFire(());

impl HoldFire {
    /// Holds the watchdog's fire, and clears an interruption raised for
    /// this thread but not yet delivered. Call with the GIL held.
    pub fn new(_py: Python<'_>) -> HoldFire {
        HOLDING.fetch_add(1, Ordering::SeqCst);
        // SAFETY: a plain C call that returns the calling thread's id.
        let me = unsafe { ffi::PyThread_get_thread_ident() };
        let s = shared();
        if s.armed.as_ref().is_some_and(|a| a.thread == me && a.fired > 0) {
            // SAFETY: we hold the GIL (`_py`); NULL clears a pending async
            // exception of the thread.
            unsafe { ffi::PyThreadState_SetAsyncExc(me as c_long, std::ptr::null_mut()) };
        }
        HoldFire(())
    }
}

impl Drop for HoldFire {
    fn drop(&mut self) {
        HOLDING.fetch_sub(1, Ordering::SeqCst);
    }
}

fn interrupt(generation: u64) {
    super::world::hurry_switch();
    Python::attach(|py| {
        let mut s = shared();
        if HOLDING.load(Ordering::SeqCst) > 0 {
            if let Some(a) = s.armed.as_mut().filter(|a| a.generation == generation) {
                a.deadline = Instant::now() + REPEAT;
            }
            super::world::unhurry_switch();
            return;
        }
        if let Some(a) = s.armed.as_mut().filter(|a| a.generation == generation) {
            let exc = py.get_type::<UpdateTimeout>();
            // SAFETY: we hold the GIL; the type object outlives the call
            // (CPython takes its own reference to the exception type).
            unsafe { ffi::PyThreadState_SetAsyncExc(a.thread as c_long, exc.as_ptr()) };
            a.fired += 1;
            a.deadline = Instant::now() + REPEAT;
        }
        super::world::unhurry_switch();
    });
}
