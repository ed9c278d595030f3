//! Statics that belong to one process, not to the program's image.
//!
//! A `static Mutex` is copied by `fork` in whatever state it was: locked
//! for good if a thread that does not exist in the child held it. And a
//! "started once" flag (`OnceLock<()>` for a helper thread) says the
//! thread runs when, in the child, it does not. [`PerProcess`] makes such a
//! static fresh in every process: each value is stamped with the fork
//! generation it was made in, and a use in a later generation (in a child)
//! makes a new value and leaks the inherited one, whose locks and threads
//! belong to the parent.
//!
//! The generation is bumped by a `pthread_atfork` child handler
//! ([`install_fork_counter`]), which runs inside `fork()` in the child for
//! every fork, the ones CPython's `os.register_at_fork` hooks see and
//! the ones a C extension makes. It is one atomic increment, which is
//! async-signal-safe.

use std::sync::atomic::{AtomicPtr, AtomicU64, Ordering};

/// How many forks separate this process from the one that started pyreload
/// (0 in the root, 1 in a child, ...).
static GENERATION: AtomicU64 = AtomicU64::new(0);

/// The fork generation of this process. One relaxed load.
#[inline]
pub fn generation() -> u64 {
    GENERATION.load(Ordering::Relaxed)
}

/// Registers the handler that counts forks. Call once, at startup, before
/// any thread of pyreload's exists.
pub fn install_fork_counter() {
    extern "C" fn child() {
        GENERATION.fetch_add(1, Ordering::Relaxed);
    }
    // SAFETY: `child` is a plain `extern "C" fn()` doing one atomic add,
    // which is allowed between fork and exec.
    unsafe {
        nix::libc::pthread_atfork(None, None, Some(child));
    }
}

struct Slot<T> {
    generation: u64,
    value: T,
}

/// A value of which every process has its own: made on first use in each
/// process by `init`, never dropped.
///
/// `get` costs two relaxed loads and a compare when the value exists.
pub struct PerProcess<T: 'static> {
    slot: AtomicPtr<Slot<T>>,
    init: fn() -> T,
}

impl<T: Send + Sync + 'static> PerProcess<T> {
    pub const fn new(init: fn() -> T) -> Self {
        PerProcess {
            slot: AtomicPtr::new(std::ptr::null_mut()),
            init,
        }
    }

    /// This process's value, made now if it has none yet.
    #[inline]
    pub fn get(&self) -> &'static T {
        let p = self.slot.load(Ordering::Acquire);
        // SAFETY: a non-null slot was leaked by `install` and is never
        // freed, so it lives as long as the process.
        if let Some(slot) = unsafe { p.as_ref() } {
            if slot.generation == generation() {
                return &slot.value;
            }
        }
        self.renew_with(|_| (self.init)())
    }

    /// Replaces this process's value by `make(inherited)`, where
    /// `inherited` is the value there now (the parent's, in a fresh child),
    /// which is leaked. For a fork hook that copies what it can from the
    /// parent's value; it must not lock anything in it that another thread
    /// may have held (use `try_lock`, or data the GIL protects).
    pub fn renew_with(&self, make: impl FnOnce(Option<&'static T>) -> T) -> &'static T {
        let old = self.slot.load(Ordering::Acquire);
        // SAFETY: as in `get`.
        let inherited = unsafe { old.as_ref() }.map(|s| &s.value);
        let new = Box::into_raw(Box::new(Slot {
            generation: generation(),
            value: make(inherited),
        }));
        match self
            .slot
            .compare_exchange(old, new, Ordering::AcqRel, Ordering::Acquire)
        {
            // The old slot is leaked: a thread of the parent may be in it.
            // SAFETY: `new` was just leaked and is never freed.
            Ok(_) => unsafe { &(*new).value },
            Err(_) => {
                // Another thread made this process's value first; use it.
                // SAFETY: `new` was never shared, so it can be freed here.
                drop(unsafe { Box::from_raw(new) });
                self.get()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    static COUNTER: PerProcess<Mutex<u32>> = PerProcess::new(|| Mutex::new(0));

    #[test]
    fn a_value_is_made_once_per_generation_and_renewal_sees_the_old_one() {
        *COUNTER.get().lock().unwrap() += 1;
        *COUNTER.get().lock().unwrap() += 1;
        assert_eq!(*COUNTER.get().lock().unwrap(), 2);
        let renewed = COUNTER.renew_with(|old| Mutex::new(*old.unwrap().lock().unwrap() * 10));
        assert_eq!(*renewed.lock().unwrap(), 20);
        assert_eq!(*COUNTER.get().lock().unwrap(), 20);
    }
}
