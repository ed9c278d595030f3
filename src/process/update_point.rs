//! `pyreload.update_point(name)`: places in the program where an update may
//! happen.
//!
//! A program marks a quiet spot, for example the top of its main loop. A
//! spec with `update_point = "name"` commits only while a thread waits
//! there. When no update asks for a point, passing it costs one atomic load.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Instant;

use super::per_process::PerProcess;

/// The update points of this process.
pub struct UpdatePoints {
    pending: AtomicBool,
    state: Mutex<State>,
    arrived: Condvar,
    released: Condvar,
}

struct State {
    wanted: Option<String>,
    /// Thread idents (as `threading.get_ident()`) waiting at the point.
    waiting: Vec<u64>,
    generation: u64,
}

/// This process's update points. Per process: a child forked while its
/// parent waited for a point must not see that request (its threads would
/// wait for an update that is not coming), nor the lock a parent thread
/// held in `arrive`, which is taken without the GIL.
static POINTS: PerProcess<UpdatePoints> = PerProcess::new(UpdatePoints::new);

/// This process's update points.
#[inline]
pub fn points() -> &'static UpdatePoints {
    POINTS.get()
}

impl UpdatePoints {
    fn new() -> Self {
        UpdatePoints {
            pending: AtomicBool::new(false),
            state: Mutex::new(State {
                wanted: None,
                waiting: Vec::new(),
                generation: 0,
            }),
            arrived: Condvar::new(),
            released: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether a thread passing an update point needs to look closer.
    #[inline]
    pub fn pending(&self) -> bool {
        self.pending.load(Ordering::Relaxed)
    }

    /// Called by a program thread, without the GIL, at `update_point(name)`:
    /// if an update waits for this point, stay here until it has committed
    /// or given up. Returns whether the thread waited.
    pub fn arrive(&self, name: &str, thread: u64) -> bool {
        let mut state = self.lock();
        if state.wanted.as_deref() != Some(name) {
            return false;
        }
        let generation = state.generation;
        state.waiting.push(thread);
        self.arrived.notify_all();
        while state.generation == generation {
            state = self.released.wait(state).unwrap_or_else(|p| p.into_inner());
        }
        if let Some(i) = state.waiting.iter().position(|t| *t == thread) {
            state.waiting.swap_remove(i);
        }
        true
    }

    /// Asks threads passing `name` to wait, until the returned guard drops.
    pub fn request(&self, name: &str) -> PointRequest<'_> {
        let mut state = self.lock();
        state.wanted = Some(name.to_string());
        state.waiting.clear();
        self.pending.store(true, Ordering::SeqCst);
        PointRequest { points: self }
    }

    /// The threads waiting at the requested point now.
    pub fn waiting(&self) -> Vec<u64> {
        self.lock().waiting.clone()
    }

    /// Blocks (call it without the GIL) until a thread waits at the point
    /// or `until` passes.
    pub fn wait_for_arrival(&self, until: Instant) -> bool {
        let mut state = self.lock();
        while state.waiting.is_empty() {
            let now = Instant::now();
            if now >= until {
                return false;
            }
            state = self
                .arrived
                .wait_timeout(state, until - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        true
    }

    fn release(&self) {
        let mut state = self.lock();
        state.wanted = None;
        state.generation += 1;
        self.pending.store(false, Ordering::SeqCst);
        self.released.notify_all();
    }
}

/// Keeps an update point requested; dropping it lets waiting threads go.
pub struct PointRequest<'a> {
    points: &'a UpdatePoints,
}

impl Drop for PointRequest<'_> {
    fn drop(&mut self) {
        self.points.release();
    }
}
