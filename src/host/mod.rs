//! `pyreload run`: hosts a program in an embedded, unmodified CPython.
//!
//! The main thread runs `__main__` exactly as `python` would (see [`embed`]).
//! A Rust control thread listens on the control socket and runs updates. It
//! blocks in `accept` without the GIL, so between updates the program pays
//! nothing: no trace function, no timer, no thread taking the GIL.

pub mod autoreload;
pub mod embed;
pub mod loaded;
pub mod pymodule;
pub mod python;
pub mod state;
pub mod update_point;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use pyo3::prelude::*;

use crate::control;
use embed::{Invocation, Target};
use state::HostState;

/// Everything `pyreload run` needs to start a program.
pub struct RunOptions {
    pub name: Option<String>,
    pub version: Option<String>,
    /// Dev mode: reload the program's own modules when their files change.
    pub reload: bool,
    /// How many committed updates stay undoable.
    pub rollback_depth: usize,
    pub target: Target,
    pub args: Vec<OsString>,
}

/// Runs the program to completion and returns its exit status.
pub fn run(options: RunOptions) -> Result<i32> {
    let python = python::resolve()?;
    // What `sys.path[0]` will be once `Py_RunMain` starts: the script's
    // directory, or the current one for `-m`.
    let program_dir = match &options.target {
        Target::Script(path) => Path::new(path)
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from(".")),
        Target::Module(_) => PathBuf::from("."),
    };
    let reload = options.reload;
    let name = options.name.clone().unwrap_or_else(|| default_name(&options.target));

    let listener = control::server::Listener::bind().context("could not open the control socket")?;
    let state = Arc::new(HostState::new(
        name,
        options.version.clone(),
        listener.path().to_path_buf(),
        options.rollback_depth,
    ));
    pymodule::install(state.clone());
    pyo3::append_to_inittab!(pyreload_module);
    // Before the interpreter starts, so every module's source is seen.
    loaded::install();

    embed::initialize(&Invocation {
        program_name: python.into_os_string(),
        target: options.target,
        args: options.args,
    });
    Python::attach(register_exit_hook).context("could not register the exit hook")?;

    remove_at_exit(listener.path().to_path_buf());
    if reload {
        autoreload::spawn(state.clone(), program_dir)?;
    }
    control::server::spawn(listener, state);
    Ok(embed::run_main())
}

/// Starts one of pyreload's own threads in the host.
///
/// Signals such as SIGINT must reach the interpreter's main thread, which
/// turns them into `KeyboardInterrupt` and whose blocking calls they
/// interrupt, never one of ours. So the thread is created with every signal
/// blocked (a thread inherits its creator's mask; blocking inside the new
/// thread would leave a window before it first runs), and the threads it
/// spawns inherit that.
pub fn spawn_service_thread(name: &str, f: impl FnOnce() + Send + 'static) {
    use nix::sys::signal::{SigSet, SigmaskHow};
    let previous = SigSet::all().thread_swap_mask(SigmaskHow::SIG_BLOCK);
    std::thread::Builder::new()
        .name(name.to_string())
        .spawn(f)
        .unwrap_or_else(|e| panic!("could not start {name}: {e}"));
    if let Ok(previous) = previous {
        let _ = previous.thread_set_mask();
    }
}

static SOCKET_PATH: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

/// Removes the control socket when the process exits normally. `sys.exit()`
/// ends the process from inside `Py_RunMain` through C `exit()`, so the
/// cleanup must be a C `atexit` handler rather than code after the call. A
/// program killed by a signal leaves the socket behind; clients and the next
/// `pyreload run` recognise it as stale and remove it.
fn remove_at_exit(path: PathBuf) {
    extern "C" fn remove_socket() {
        if let Some(path) = SOCKET_PATH.get() {
            state::remove_own_socket(path);
        }
    }
    if SOCKET_PATH.set(path).is_ok() {
        // SAFETY: `remove_socket` is a plain `extern "C" fn()` that touches
        // only a static set before registration.
        unsafe {
            nix::libc::atexit(remove_socket);
        }
    }
}

/// The module registered in the interpreter's inittab under the name
/// `pyreload`.
use pymodule::pyreload as pyreload_module;

fn register_exit_hook(py: Python<'_>) -> PyResult<()> {
    let module = py.import("pyreload")?;
    let hook = module.getattr("_host_exiting")?;
    py.import("atexit")?.call_method1("register", (hook,))?;
    // The program did not import `pyreload`; keep `sys.modules` as `python`
    // would have it.
    py.import("sys")?.getattr("modules")?.del_item("pyreload")?;
    Ok(())
}

/// `app.py` runs as `app`; `-m kvserver` runs as `kvserver`.
fn default_name(target: &Target) -> String {
    match target {
        Target::Script(path) => Path::new(path)
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "python".to_string()),
        Target::Module(module) => module.clone(),
    }
}

/// Checks a path given on the command line before handing it to Python, so
/// a typo gets pyreload's error rather than a traceback-free exit 2.
pub fn check_script(path: &Path) -> Result<PathBuf> {
    if !path.exists() {
        bail!("can't open file '{}': No such file or directory", path.display());
    }
    Ok(path.to_path_buf())
}
