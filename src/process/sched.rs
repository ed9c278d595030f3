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
//! - **Real time** (`SCHED_FIFO`, priority 2 of 99), where the
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
//! Only pyreload's own thread is touched for the wait and the work that
//! follows it. With real time, the program's threads are raised too, for
//! the moment between the bell and pyreload's thread holding the GIL
//! ([`GilBoost`]), and for [`BOOST_CAP`] at most ([`BoostWatch`]); then
//! each gets its own scheduling back.

use std::io;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

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
    get_for(0)
}

/// Thread `tid`'s scheduling (0: the calling thread).
fn get_for(tid: i32) -> io::Result<SchedAttr> {
    let mut attr = SchedAttr::default();
    // SAFETY: the kernel writes at most `size` bytes into `attr`.
    let r = unsafe {
        nix::libc::syscall(
            nix::libc::SYS_sched_getattr,
            tid,
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

/// `attr` turned into `SCHED_FIFO` at `priority`, the rest kept.
fn fifo(priority: u32, attr: &SchedAttr) -> SchedAttr {
    SchedAttr {
        policy: SCHED_FIFO,
        priority,
        nice: 0,
        runtime: 0,
        ..*attr
    }
}

fn set(attr: &SchedAttr) -> io::Result<()> {
    set_for(0, attr)
}

/// Sets thread `tid`'s scheduling (0: the calling thread).
fn set_for(tid: i32, attr: &SchedAttr) -> io::Result<()> {
    let attr = SchedAttr {
        size: std::mem::size_of::<SchedAttr>() as u32,
        flags: 0,
        ..*attr
    };
    // SAFETY: the kernel reads `size` bytes from `attr`.
    let r = unsafe { nix::libc::syscall(nix::libc::SYS_sched_setattr, tid, &attr as *const SchedAttr, 0u32) };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The real-time priority of the thread that waits for the bell: above
/// [`GIL_HOLDER_PRIORITY`], so that no boosted program thread can keep it
/// off the CPU.
const BELL_PRIORITY: u32 = 2;

/// The real-time priority the program's threads get from [`GilBoost`].
const GIL_HOLDER_PRIORITY: u32 = 1;

/// How long a [`GilBoost`] keeps the program's threads raised at most.
/// They need it only until the GIL's holder reaches its next
/// switch-interval check, well under a millisecond; a holder inside a long
/// call that keeps the GIL (a big sort, a regular expression, a C
/// extension's loop) reaches none until the call returns, and would run
/// all that time at real-time priority, ahead of every ordinary thread on
/// its core. After this the threads get their own scheduling back and the
/// commit waits for the GIL as an ordinary process would.
pub const BOOST_CAP: Duration = Duration::from_millis(20);

/// The GIL for the commit, promptly. Once the bell has rung, the member's
/// thread (real-time) needs the GIL from whichever program thread holds
/// it, and that one drops it only while it runs. On a busy machine it may
/// sit preempted behind other processes' threads for a slice or more:
/// measured with 8 gunicorn workers under 16 clients on 2 cores, one
/// member in most updates let go 3 to 13 ms after the bell while the
/// others took under 1.5 ms, and that member was the tree's skew.
///
/// So, for the moment between the bell and this thread's holding the GIL,
/// every other thread of the process runs at real-time priority 1: the
/// holder runs at once, drops the GIL at its next switch-interval check
/// (0.2 ms while a member waits for the commit), and the boost ends as
/// this thread takes it, before the world is stopped. The threads are
/// listed ahead ([`GilBoost::list`], while staged), so the bell costs two
/// system calls per thread. Only where the bell's own thread got real-time
/// priority above theirs ([`BellPriority::may_boost`]).
pub struct GilBoost {
    threads: Vec<(i32, SchedAttr)>,
}

impl GilBoost {
    /// The process's other threads that run under the ordinary policies.
    pub fn list() -> GilBoost {
        let me = nix::unistd::gettid().as_raw();
        let tasks = std::fs::read_dir("/proc/self/task").into_iter().flatten().flatten();
        GilBoost::ordinary(
            tasks
                .filter_map(|t| t.file_name().to_str()?.parse::<i32>().ok())
                .filter(|&tid| tid != me),
        )
    }

    /// The threads `tids` (kernel thread ids) of those that run under the
    /// ordinary policies: the ones a stopped world lets run on alone, which
    /// on a busy machine would otherwise wait for a core (and, holding the
    /// GIL, keep the stopped world's own thread waiting too).
    pub fn of(tids: &[i32]) -> GilBoost {
        GilBoost::ordinary(tids.iter().copied())
    }

    fn ordinary(tids: impl Iterator<Item = i32>) -> GilBoost {
        let threads = tids
            .filter_map(|tid| Some((tid, get_for(tid).ok()?)))
            .filter(|(_, attr)| matches!(attr.policy, SCHED_OTHER | SCHED_BATCH))
            .collect();
        GilBoost { threads }
    }

    /// Raises every listed thread, for `watch`'s cap at most; ending or
    /// dropping the result puts each back.
    pub fn raise<'a>(&self, watch: &'a BoostWatch) -> Raised<'a> {
        let raised: Vec<(i32, SchedAttr)> = self
            .threads
            .iter()
            // Still ours: a thread that ended since it was listed may have
            // left its id to another process's.
            .filter(|(tid, _)| std::path::Path::new(&format!("/proc/self/task/{tid}")).exists())
            .filter(|(tid, attr)| set_for(*tid, &fifo(GIL_HOLDER_PRIORITY, attr)).is_ok())
            .copied()
            .collect();
        // The watch holds them from here: whoever ends the boost first,
        // the cap or [`Raised::end`], puts them back.
        let watch = (!raised.is_empty()).then(|| {
            watch.arm(raised);
            watch
        });
        Raised { watch }
    }
}

/// Threads a [`GilBoost`] raised, until ended or dropped, or until the
/// watch's cap puts them back.
pub struct Raised<'a> {
    /// Armed with the raised threads; none once ended, or if none was.
    watch: Option<&'a BoostWatch>,
}

impl Raised<'_> {
    /// Whether any thread was raised (the process may ask for it).
    #[cfg(test)]
    fn any(&self) -> bool {
        self.watch.is_some()
    }

    /// Puts the threads back; true if the cap had done it already (the
    /// GIL's holder was in a long call: a member's report says so).
    pub fn end(mut self) -> bool {
        self.put_back()
    }

    fn put_back(&mut self) -> bool {
        match self.watch.take().map(BoostWatch::disarm) {
            Some(Some(threads)) => {
                put_back(&threads);
                false
            }
            Some(None) => true,
            None => false,
        }
    }
}

impl Drop for Raised<'_> {
    fn drop(&mut self) {
        self.put_back();
    }
}

/// A thread that puts a [`GilBoost`]'s threads back once it has lasted
/// [`BOOST_CAP`]. Started ahead (a member's, while it waits for the bell),
/// so that raising starts no thread, and at the bell's priority where it
/// may, so that the raised threads cannot keep it off the CPU. No watch,
/// no boost: nothing raises a program's threads without a bound.
pub struct BoostWatch {
    shared: Arc<Watched>,
    thread: Option<std::thread::JoinHandle<()>>,
}

struct Watched {
    state: Mutex<Watch>,
    wake: Condvar,
    cap: Duration,
}

enum Watch {
    Idle,
    /// Raised at the given instant: these threads, with the scheduling
    /// each had before.
    Armed(Instant, Vec<(i32, SchedAttr)>),
    /// The cap put the last raised threads back.
    Capped,
    Quit,
}

impl BoostWatch {
    pub fn start() -> io::Result<BoostWatch> {
        BoostWatch::with_cap(BOOST_CAP)
    }

    fn with_cap(cap: Duration) -> io::Result<BoostWatch> {
        let shared = Arc::new(Watched {
            state: Mutex::new(Watch::Idle),
            wake: Condvar::new(),
            cap,
        });
        let watched = Arc::clone(&shared);
        // Signals blocked, as every thread of pyreload's in a program.
        let thread = super::try_spawn_service_thread("pyreload-boost-cap", move || watched.run())?;
        Ok(BoostWatch {
            shared,
            thread: Some(thread),
        })
    }

    fn arm(&self, threads: Vec<(i32, SchedAttr)>) {
        *self.shared.lock() = Watch::Armed(Instant::now(), threads);
        self.shared.wake.notify_one();
    }

    /// Ends the watch over the last raise: its threads, to put back, or
    /// none if the cap has put them back. The watching thread is not
    /// woken: it finds nothing armed when its wait ends.
    fn disarm(&self) -> Option<Vec<(i32, SchedAttr)>> {
        match std::mem::replace(&mut *self.shared.lock(), Watch::Idle) {
            Watch::Armed(_, threads) => Some(threads),
            _ => None,
        }
    }

    /// Waits until the cap has put the last raised threads back.
    #[cfg(test)]
    fn wait_capped(&self) {
        let mut state = self.shared.lock();
        while !matches!(*state, Watch::Capped) {
            state = self.shared.wake.wait(state).unwrap_or_else(|e| e.into_inner());
        }
    }
}

impl Watched {
    fn lock(&self) -> MutexGuard<'_, Watch> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn run(&self) {
        if let Ok(a) = get() {
            let _ = set(&fifo(BELL_PRIORITY, &a));
        }
        let mut state = self.lock();
        loop {
            let wait = match &*state {
                Watch::Quit => return,
                Watch::Idle | Watch::Capped => None,
                Watch::Armed(at, threads) => match self.cap.checked_sub(at.elapsed()) {
                    Some(left) if !left.is_zero() => Some(left),
                    _ => {
                        put_back(threads);
                        *state = Watch::Capped;
                        self.wake.notify_all();
                        continue;
                    }
                },
            };
            state = match wait {
                Some(left) => match self.wake.wait_timeout(state, left) {
                    Ok((state, _)) => state,
                    Err(e) => e.into_inner().0,
                },
                None => self.wake.wait(state).unwrap_or_else(|e| e.into_inner()),
            };
        }
    }
}

/// Gives each thread the scheduling it had; one that ended meanwhile is
/// no error.
fn put_back(threads: &[(i32, SchedAttr)]) {
    for (tid, attr) in threads {
        let _ = set_for(*tid, attr);
    }
}

impl Drop for BoostWatch {
    fn drop(&mut self) {
        *self.shared.lock() = Watch::Quit;
        self.shared.wake.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// What the calling thread got for the bell (a member's report says).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Turn {
    /// `SCHED_FIFO` at priority 2 (and the program's threads boosted to
    /// 1 until it holds the GIL: [`GilBoost`]).
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
    /// Got [`BELL_PRIORITY`], above the boosted program threads'.
    may_boost: bool,
    _not_send: std::marker::PhantomData<*const ()>,
}

impl BellPriority {
    /// Best effort: `realtime` false asks for the short slice only. A
    /// thread under another policy (real-time, idle) is left as it is.
    pub fn begin(realtime: bool) -> BellPriority {
        let before = get().ok().filter(|a| matches!(a.policy, SCHED_OTHER | SCHED_BATCH));
        let mut may_boost = false;
        let turn = match before {
            None => Turn::Unchanged,
            Some(a) => {
                // An `RLIMIT_RTPRIO` of 1 allows priority 1 only: real
                // time still, without the boost (see `may_boost`).
                may_boost = realtime && set(&fifo(BELL_PRIORITY, &a)).is_ok();
                if may_boost || (realtime && set(&fifo(GIL_HOLDER_PRIORITY, &a)).is_ok()) {
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
            may_boost,
            _not_send: std::marker::PhantomData,
        }
    }

    pub fn turn(&self) -> Turn {
        self.turn
    }

    /// Whether a [`GilBoost`] may raise the program's threads: only below
    /// this thread's own priority, so that none of them can keep it off
    /// the CPU.
    pub fn may_boost(&self) -> bool {
        self.may_boost
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

    /// Another thread of this process, waiting until it is ended.
    struct Other {
        tid: i32,
        done: std::sync::mpsc::Sender<()>,
        thread: std::thread::JoinHandle<()>,
    }

    impl Other {
        fn start() -> Other {
            let (tx, rx) = std::sync::mpsc::channel();
            let (done, done_rx) = std::sync::mpsc::channel::<()>();
            let thread = std::thread::spawn(move || {
                tx.send(nix::unistd::gettid().as_raw()).unwrap();
                let _ = done_rx.recv();
            });
            let tid = rx.recv().unwrap();
            Other { tid, done, thread }
        }

        fn end(self) {
            self.done.send(()).unwrap();
            self.thread.join().unwrap();
        }
    }

    #[test]
    fn a_boost_raises_the_other_threads_and_gives_each_its_own_back() {
        let other = Other::start();
        let tid = other.tid;
        let before = get_for(tid).unwrap();
        assert!(GilBoost::list().threads.iter().any(|(t, _)| *t == tid));
        // Only this one: the other tests' threads are this process's too.
        let boost = GilBoost::of(&[tid]);
        let watch = BoostWatch::with_cap(Duration::from_secs(3600)).unwrap();
        let raised = boost.raise(&watch);
        let inside = get_for(tid).unwrap();
        let permitted = raised.any();
        assert!(!raised.end(), "ended before the cap");
        let after = get_for(tid).unwrap();
        other.end();
        if permitted {
            assert_eq!((inside.policy, inside.priority), (SCHED_FIFO, GIL_HOLDER_PRIORITY));
        } else {
            assert_eq!(inside.policy, before.policy);
        }
        assert_eq!(
            (after.policy, after.priority, after.runtime),
            (before.policy, before.priority, before.runtime)
        );
    }

    /// A thread that holds the GIL in a long call keeps the boost from
    /// ending at the GIL: the watch ends it at the cap, and says so.
    #[test]
    fn a_boost_that_outlasts_its_cap_is_put_back_by_the_watch() {
        let other = Other::start();
        let tid = other.tid;
        let before = get_for(tid).unwrap();
        let boost = GilBoost::of(&[tid]);
        let watch = BoostWatch::with_cap(Duration::from_millis(1)).unwrap();
        let raised = boost.raise(&watch);
        let permitted = raised.any();
        if permitted {
            watch.wait_capped();
            let capped = get_for(tid).unwrap();
            assert_eq!(
                (capped.policy, capped.priority),
                (before.policy, before.priority),
                "put back while still raised"
            );
        }
        assert_eq!(raised.end(), permitted, "the cap ended it");
        // The watch serves the next boost.
        let again = boost.raise(&watch);
        if permitted {
            watch.wait_capped();
        }
        assert_eq!(again.end(), permitted);
        let after = get_for(tid).unwrap();
        other.end();
        assert_eq!(
            (after.policy, after.priority, after.runtime),
            (before.policy, before.priority, before.runtime)
        );
    }

    #[test]
    fn real_time_where_permitted_and_the_old_policy_after() {
        let default = get().unwrap();
        let bell = BellPriority::begin(true);
        let inside = get().unwrap();
        let turn = bell.turn();
        let bell_may_boost = bell.may_boost();
        drop(bell);
        let after = get().unwrap();
        assert_eq!(
            (after.policy, after.priority, after.runtime),
            (default.policy, 0, default.runtime)
        );
        match turn {
            // Priority 1 where only an `RLIMIT_RTPRIO` of 1 allows it, and
            // then no boost.
            Turn::Realtime => {
                assert_eq!(inside.policy, SCHED_FIFO);
                assert!(
                    inside.priority == BELL_PRIORITY || inside.priority == GIL_HOLDER_PRIORITY,
                    "{}",
                    inside.priority
                );
                assert_eq!(bell_may_boost, inside.priority == BELL_PRIORITY);
            }
            // Not permitted here: the short slice, as without asking.
            Turn::ShortSlice | Turn::Unchanged => assert_eq!(inside.policy, default.policy),
        }
    }
}
