//! A short scheduler slice for pyreload's own thread while it waits to
//! act on a tree's bell.
//!
//! When the bell rings, every member's waiting thread wakes at once, and
//! each has microseconds of work (`together`: let its world go) or a
//! fraction of a millisecond (`each`: its commit). On a busy machine the
//! scheduler lets a woken thread wait behind whatever runs, up to a slice
//! (1-3 ms) per thread ahead of it, and the members' switch spreads over
//! milliseconds. Linux 6.12's EEVDF scheduler takes a thread's requested
//! slice (`sched_attr.sched_runtime` for `SCHED_OTHER`, 0.1 to 100 ms,
//! no privilege needed): a thread with a short slice has an early
//! deadline, and preempts on wake-up. It asks nothing of fairness: the
//! thread still gets its fair share, only sooner, in shorter turns.
//! Older kernels ignore the field, and then this does nothing.
//!
//! Only pyreload's own thread is touched, and only for the wait and the
//! work that follows it; the program's threads keep their scheduling.

use std::io;

/// `struct sched_attr` (`include/uapi/linux/sched/types.h`, size 56).
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct SchedAttr {
    size: u32,
    policy: u32,
    flags: u64,
    nice: i32,
    priority: u32,
    runtime: u64,
    deadline: u64,
    period: u64,
    util_min: u32,
    util_max: u32,
}

const SCHED_OTHER: u32 = 0;
const SCHED_BATCH: u32 = 3;

/// The shortest slice the kernel accepts.
const SHORT_SLICE_NS: u64 = 100_000;

fn get() -> io::Result<SchedAttr> {
    let mut attr = SchedAttr::default();
    // SAFETY: the kernel writes at most `size` bytes into `attr`; 0 is the
    // calling thread.
    let r = unsafe {
        nix::libc::syscall(
            nix::libc::SYS_sched_getattr,
            0,
            &mut attr as *mut SchedAttr,
            std::mem::size_of::<SchedAttr>() as u32,
            0u32,
        )
    };
    if r == 0 {
        Ok(attr)
    } else {
        Err(io::Error::last_os_error())
    }
}

fn set(attr: &SchedAttr) -> io::Result<()> {
    let attr = SchedAttr {
        size: std::mem::size_of::<SchedAttr>() as u32,
        flags: 0,
        ..*attr
    };
    // SAFETY: the kernel reads `size` bytes from `attr`; 0 is the calling
    // thread.
    let r = unsafe { nix::libc::syscall(nix::libc::SYS_sched_setattr, 0, &attr as *const SchedAttr, 0u32) };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// While alive, the calling thread asks for the shortest slice; dropping
/// it (on the same thread) gives it the default again.
pub struct ShortSlice {
    before: Option<SchedAttr>,
    _not_send: std::marker::PhantomData<*const ()>,
}

impl ShortSlice {
    /// Best effort: a thread under another policy (real-time, idle), or a
    /// kernel that refuses, is left as it is.
    pub fn begin() -> ShortSlice {
        let before = get()
            .ok()
            .filter(|a| matches!(a.policy, SCHED_OTHER | SCHED_BATCH))
            .filter(|a| {
                set(&SchedAttr {
                    runtime: SHORT_SLICE_NS,
                    ..*a
                })
                .is_ok()
            });
        ShortSlice {
            before,
            _not_send: std::marker::PhantomData,
        }
    }
}

impl Drop for ShortSlice {
    fn drop(&mut self) {
        if let Some(before) = self.before {
            // 0: the default slice again (pyreload's own thread had it).
            let _ = set(&SchedAttr { runtime: 0, ..before });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_slice_is_short_inside_and_the_default_after() {
        let default = get().unwrap().runtime;
        let short = ShortSlice::begin();
        let inside = get().unwrap().runtime;
        drop(short);
        assert_eq!(get().unwrap().runtime, default);
        // A kernel before 6.12 keeps its own figure (often 0) throughout.
        assert!(
            inside == SHORT_SLICE_NS || inside == default,
            "inside {inside}, default {default}"
        );
    }
}
