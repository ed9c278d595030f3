//! The `pyreload` module that a hosted program may `import`.
//!
//! It is compiled into the binary and registered with `PyImport_AppendInittab`
//! before the interpreter starts, so it needs no file on `sys.path` and a
//! program that never imports it pays nothing.

use pyo3::prelude::*;

use crate::process::state::{self, ProcessState};

/// This process's state: the root's, or in a forked member its own.
fn host() -> PyResult<&'static ProcessState> {
    state::try_current().ok_or_else(|| pyo3::exceptions::PyRuntimeError::new_err("pyreload host is not running"))
}

#[pymodule]
pub mod pyreload {
    use super::*;

    /// Raised in an update's own code (a module body, a condition, a
    /// transformer or a check) that ran past its deadline.
    #[pymodule_export]
    use crate::engine::watchdog::UpdateTimeout;

    /// The version the program runs now: the one given to `pyreload run
    /// --version`, or the `to` of the last update applied. None when neither
    /// was given.
    #[pyfunction]
    fn version() -> PyResult<Option<String>> {
        Ok(host()?.version())
    }

    /// Marks a place where an update may happen, such as the top of a main
    /// loop. When an update waits for this point (`[safe_point]
    /// update_point = "name"`), the calling thread stays here until the
    /// update has committed or given up, and True is returned. Otherwise it
    /// returns False at once: the cost is one atomic load.
    #[pyfunction]
    fn update_point(py: Python<'_>, name: &str) -> bool {
        let points = crate::process::update_point::points();
        if !points.pending() {
            return false;
        }
        // SAFETY: a plain C call that only reads the calling thread's id.
        let thread = unsafe { pyo3::ffi::PyThread_get_thread_ident() } as u64;
        py.detach(|| points.arrive(name, thread))
    }

    /// The program's name, as `pyreload status` shows it.
    #[pyfunction]
    fn name() -> PyResult<String> {
        Ok(host()?.name.clone())
    }

    /// Registered with `atexit`: waits for an update in progress to finish
    /// and refuses new ones, so the control thread never enters an
    /// interpreter that is finalising.
    #[pyfunction]
    fn _host_exiting(py: Python<'_>) -> PyResult<()> {
        let host = host()?;
        py.detach(|| {
            host.mark_exiting(std::time::Duration::from_secs(2));
            // No update can start any more; stop advertising the socket.
            crate::process::state::remove_own_socket(&host.socket_path);
        });
        Ok(())
    }

    /// Registered with `os.register_at_fork(after_in_child=...)`: makes
    /// the child a member of the program's tree (see `host::fork`).
    #[pyfunction]
    fn _after_fork_in_child(py: Python<'_>) {
        crate::host::fork::after_in_child(py);
    }

    /// Registered with `os.register_at_fork(before=...)` on 3.12+.
    #[cfg(all(Py_3_12, not(Py_3_13)))]
    #[pyfunction]
    fn _before_fork() {
        crate::host::fork::before();
    }

    /// Registered with `os.register_at_fork(after_in_parent=...)`.
    #[pyfunction]
    fn _after_fork_in_parent() {
        crate::host::fork::after_in_parent();
    }
}
