//! The bottom layer: what one process of a hosted program is, and what it
//! shares between the interpreter, the control thread and the engine.
//!
//! Every layer above may use it, and it uses none of them:
//!
//! ```text
//! cli ──► control ──► engine ──► process      host ──► {control, engine, process}
//! ```
//!
//! | module           | holds                                                      | after a fork, in the child     |
//! |------------------|------------------------------------------------------------|--------------------------------|
//! | [`state`]        | [`state::ProcessState`]: name, version, history, gate, ... | rebuilt from what can be copied without waiting; the parent's is leaked |
//! | [`per_process`]  | [`per_process::PerProcess`]: a static that is fresh in each process | renewed on first use       |
//! | [`bell`]         | the FIFOs that wake every stopped member at once          | closed                         |
//! | [`fds`]          | the control sockets open now                               | closed                         |
//! | [`tree`]         | identity, tree directory, member sockets, `/proc` reads    | the child becomes a member     |
//! | [`update_point`] | `pyreload.update_point()` rendezvous                       | fresh (per-process)            |
//! | [`loaded`]       | the sources the program imported                           | kept (GIL-protected)           |
//! | [`runtime_dir`]  | where control sockets live                                 | n/a                            |
//! | [`wire`]         | the status facts the state stores and the protocol carries | n/a                            |
//!
//! The rule after a fork (`os.fork`, `multiprocessing`, gunicorn): the
//! child has one thread, and every lock that another thread of the parent
//! held is locked forever in it. So nothing here is ever locked in a child
//! unless it is GIL-protected (the forking thread held the GIL); per-process
//! values are built fresh, and the parent's are leaked, never dropped.

pub mod bell;
pub mod fds;
pub mod loaded;
pub mod member_wire;
pub mod per_process;
pub mod runtime_dir;
pub mod sched;
pub mod state;
pub mod tree;
pub mod update_point;
pub mod wire;

/// The `major.minor` version of the interpreter pyreload was built against
/// (the engine checks the running libpython against it).
pub const BUILD_PYTHON_VERSION: &str = env!("PYRELOAD_BUILD_PYTHON_VERSION");

/// Tells whether the client that asked for an update has gone away.
pub type ClientGone<'a> = &'a (dyn Fn() -> bool + Sync);

/// Starts one of pyreload's own threads in the host.
///
/// Signals such as SIGINT must reach the interpreter's main thread, which
/// turns them into `KeyboardInterrupt` and whose blocking calls they
/// interrupt, never one of ours. So the thread is created with every signal
/// blocked (a thread inherits its creator's mask; blocking inside the new
/// thread would leave a window before it first runs), and the threads it
/// spawns inherit that.
pub fn spawn_service_thread(name: &str, f: impl FnOnce() + Send + 'static) {
    try_spawn_service_thread(name, f).unwrap_or_else(|e| panic!("could not start {name}: {e}"));
}

/// [`spawn_service_thread`], returning the error instead of panicking: for
/// the fork hook, which must not unwind into CPython.
pub fn try_spawn_service_thread(
    name: &str,
    f: impl FnOnce() + Send + 'static,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    try_spawn_service_thread_returning(name, f)
}

/// [`try_spawn_service_thread`] for a thread that hands a value back when
/// joined (the control thread returns its listener when paused).
pub fn try_spawn_service_thread_returning<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::io::Result<std::thread::JoinHandle<T>> {
    use nix::sys::signal::{SigSet, SigmaskHow};
    let previous = SigSet::all().thread_swap_mask(SigmaskHow::SIG_BLOCK);
    let spawned = std::thread::Builder::new().name(name.to_string()).spawn(f);
    if let Ok(previous) = previous {
        let _ = previous.thread_set_mask();
    }
    spawned
}

/// Writes one diagnostic line to the process's stderr with a single
/// `write(2)`, taking no lock.
///
/// `eprintln!` takes Rust's stderr lock. A child forked while one of the
/// parent's threads held it (printing a log line) inherits it locked, and
/// its first `eprintln!` would hang. So every line pyreload itself prints
/// from inside a hosted program goes through here. One `write` of less
/// than `PIPE_BUF` bytes is also not interleaved with other writers.
pub fn log(line: impl AsRef<str>) {
    let mut bytes = Vec::with_capacity(line.as_ref().len() + 1);
    bytes.extend_from_slice(line.as_ref().as_bytes());
    bytes.push(b'\n');
    let mut rest = bytes.as_slice();
    while !rest.is_empty() {
        // SAFETY: writes from a valid buffer of `rest.len()` bytes to fd 2.
        let n = unsafe { nix::libc::write(2, rest.as_ptr().cast(), rest.len()) };
        if n <= 0 {
            if n < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return;
        }
        rest = &rest[n as usize..];
    }
}
