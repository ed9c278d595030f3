//! The `pyreload` module that a hosted program may `import`.
//!
//! It is compiled into the binary and registered with `PyImport_AppendInittab`
//! before the interpreter starts, so it needs no file on `sys.path` and a
//! program that never imports it pays nothing.

use std::sync::{Arc, OnceLock};

use pyo3::prelude::*;

use super::state::HostState;

static HOST: OnceLock<Arc<HostState>> = OnceLock::new();

/// Makes the host's state visible to the module. Called once, before the
/// interpreter starts.
pub fn install(state: Arc<HostState>) {
    let _ = HOST.set(state);
}

fn host() -> PyResult<&'static Arc<HostState>> {
    HOST.get()
        .ok_or_else(|| pyo3::exceptions::PyRuntimeError::new_err("pyreload host is not running"))
}

#[pymodule]
pub mod pyreload {
    use super::*;

    /// The version the program runs now: the one given to `pyreload run
    /// --version`, or the `to` of the last update applied. None when neither
    /// was given.
    #[pyfunction]
    fn version() -> PyResult<Option<String>> {
        Ok(host()?.version())
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
            host.mark_exiting();
            // No update can start any more; stop advertising the socket.
            crate::host::state::remove_own_socket(&host.socket_path);
        });
        Ok(())
    }
}
