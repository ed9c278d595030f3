//! A prompt turn on the CPU for pyreload's own thread while it waits to
//! act on a tree's bell.
//!
//! When the bell rings, every member's waiting thread wakes at once, and
//! each has microseconds of work (`together`: let its world go) or a
//! fraction of a millisecond (`each`: its commit). On a busy machine the
//! scheduler lets a woken thread wait behind whatever runs, up to a slice
//! (1-3 ms) per thread ahead of it, and the members' switch spreads over
//! milliseconds.
//!
//! Two ways out, best first:
//!
//! - **Real time** (`SCHED_FIFO`, the lowest priority, 1), where the
//!   process may ask for it (`CAP_SYS_NICE`, as root has it outside a
//!   container, or an `RLIMIT_RTPRIO` of 1 or more): a woken thread runs
//!   at once, ahead of every ordinary thread. The thread only waits and
//!   then does its member's part of the commit, which its deadlines
//!   bound; the kernel's real-time throttling (95% of each second) bounds
//!   it again.
//! - **A short slice**: Linux 6.12's EEVDF scheduler takes a thread's
//!   requested slice (`sched_attr.sched_runtime` for `SCHED_OTHER`, 0.1
//!   to 100 ms, no privilege needed): a thread with a short slice has an
//!   early deadline, and preempts on wake-up. It asks nothing of
//!   fairness: the thread still gets its fair share, only sooner, in
//!   shorter turns. Older kernels ignore the field, and then this does
//!   nothing.
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
const SCHED_FIFO: u32 = 1;
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

/// What the calling thread got for the bell (a member's report says).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Turn {
    /// `SCHED_FIFO` at priority 1.
    Realtime,
    /// The shortest EEVDF slice.
    ShortSlice,
    /// Its scheduling as it was: under another policy already, or a
    /// kernel that refused both.
    Unchanged,
}

/// While alive, the calling thread waits for the bell at real-time
/// priority where it may, or else with the shortest slice; dropping it
/// (on the same thread) gives it its scheduling back.
pub struct BellPriority {
    before: Option<SchedAttr>,
    turn: Turn,
    _not_send: std::marker::PhantomData<*const ()>,
}

impl BellPriority {
    /// Best effort: `realtime` false asks for the short slice only. A
    /// thread under another policy (real-time, idle) is left as it is.
    pub fn begin(realtime: bool) -> BellPriority {
        let before = get().ok().filter(|a| matches!(a.policy, SCHED_OTHER | SCHED_BATCH));
        let turn = match before {
            None => Turn::Unchanged,
            Some(a) => {
                let fifo = SchedAttr {
                    policy: SCHED_FIFO,
                    priority: 1,
                    nice: 0,
                    runtime: 0,
                    ..a
                };
                if realtime && set(&fifo).is_ok() {
                    Turn::Realtime
                } else if set(&SchedAttr {
                    runtime: SHORT_SLICE_NS,
                    ..a
                })
                .is_ok()
                {
                    Turn::ShortSlice
                } else {
                    Turn::Unchanged
                }
            }
        };
        BellPriority {
            before: before.filter(|_| turn != Turn::Unchanged),
            turn,
            _not_send: std::marker::PhantomData,
        }
    }

    pub fn turn(&self) -> Turn {
        self.turn
    }
}

impl Drop for BellPriority {
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
        let default = get().unwrap();
        let short = BellPriority::begin(false);
        let inside = get().unwrap();
        drop(short);
        let after = get().unwrap();
        assert_eq!((after.policy, after.runtime), (default.policy, default.runtime));
        assert_eq!(inside.policy, default.policy);
        // A kernel before 6.12 keeps its own figure (often 0) throughout.
        assert!(
            inside.runtime == SHORT_SLICE_NS || inside.runtime == default.runtime,
            "inside {}, default {}",
            inside.runtime,
            default.runtime
        );
    }

    #[test]
    fn real_time_where_permitted_and_the_old_policy_after() {
        let default = get().unwrap();
        let bell = BellPriority::begin(true);
        let inside = get().unwrap();
        let turn = bell.turn();
        drop(bell);
        let after = get().unwrap();
        assert_eq!(
            (after.policy, after.priority, after.runtime),
            (default.policy, 0, default.runtime)
        );
        match turn {
            Turn::Realtime => assert_eq!((inside.policy, inside.priority), (SCHED_FIFO, 1)),
            // Not permitted here: the short slice, as without asking.
            Turn::ShortSlice | Turn::Unchanged => assert_eq!(inside.policy, default.policy),
        }
    }
}
