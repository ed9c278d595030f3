//! A process forked from the hosted program becomes a member of its tree.
//!
//! CPython runs the hook registered with `os.register_at_fork(after_in_child=...)`
//! at the end of `PyOS_AfterFork_Child`: in the child, with the GIL held
//! and only the forking thread left. Every other thread of the parent
//! (the control thread, connection threads, the watchdog) is gone, and any
//! lock one of them held stays locked. So [`after_in_child`]:
//!
//! 1. closes the control sockets inherited from the parent
//!    ([`crate::process::fds`]);
//! 2. builds this process's own state from what the parent's lets it copy
//!    without waiting ([`ProcessState::forked_from`]) and installs it; the
//!    parent's is leaked, never locked or dropped;
//! 3. renews the engine's per-process tracking ([`engine::after_fork_in_child`]);
//!    the other per-process statics renew themselves on first use
//!    ([`crate::process::per_process`]);
//! 4. binds `<runtime>/tree-<rootpid>/<pid>.sock` and starts the member's
//!    control thread, with every signal blocked, serving the same requests
//!    as the root's, for this process.
//!
//! It runs no Python code and imports nothing: about ten syscalls and one
//! `pthread_create` (and a call of `sys.setswitchinterval` in a child
//! forked while its parent waited for a commit with the short interval).
//! Diagnostics go through [`crate::process::log`] (`write(2)`), never
//! `eprintln!`, whose lock may be held.

use pyo3::prelude::*;

use crate::control::server::{self, Listener};
use crate::engine;
use crate::process::state::{self, ProcessState};
use crate::process::tree::Identity;

/// The `after_in_child` fork hook.
pub fn after_in_child(py: Python<'_>) {
    let Some(parent) = state::try_current() else { return };
    crate::process::fds::close_inherited();
    let identity = Identity::forked_from(&parent.identity);
    let (child, lost) = ProcessState::forked_from(parent, identity);
    let child = state::replace(child);
    engine::after_fork_in_child(py);
    if !lost.is_empty() {
        crate::process::log(format!(
            "pyreload: pid {}: forked while another thread held its parent's {}; this process starts without it",
            child.pid,
            lost.join(", ")
        ));
    }
    let started = Listener::bind_member(&child.identity)
        .and_then(|listener| server::spawn(listener, super::service::Service::handler()).map_err(Into::into));
    if let Err(e) = started {
        crate::process::log(format!(
            "pyreload: pid {}: could not become a member of the program's tree (it cannot be updated): {e:#}",
            child.pid
        ));
    }
}

/// The `before` fork hook, registered on CPython 3.12 (GIL held, in the
/// parent): stops pyreload's idle threads, so that the fork's "this
/// process is multi-threaded" `DeprecationWarning` is given exactly when
/// `python` would give it. [`after_in_parent`] restarts the control
/// thread; the watchdog restarts with the next update.
///
/// Not on 3.13: there `os.fork()` counts the threads (and warns) after
/// the `after_in_parent` hooks have run, so the restarted control thread
/// is counted. Restarting it any later needs a trigger that runs after
/// `os.fork()` returns, and none is reliable (a pending call runs only
/// when the main thread next runs bytecode, which may be never while it
/// waits for its workers). So 3.13 gives the warning where `python` would
/// not (a fork in `__main__`, or with warnings enabled), and pays nothing
/// for trying.
#[cfg(all(Py_3_12, not(Py_3_13)))]
pub fn before() {
    engine::pause_for_fork();
    server::pause_for_fork();
}

/// The `after_in_parent` fork hook: counts the fork, for a tree's freeze
/// ([`crate::process::tree::forks`]), and on 3.12 restarts what
/// [`before`] stopped.
pub fn after_in_parent() {
    crate::process::tree::note_fork();
    #[cfg(all(Py_3_12, not(Py_3_13)))]
    server::resume_after_fork();
}
