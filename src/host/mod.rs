//! `pyreload run`: hosts a program in an embedded, unmodified CPython.
//!
//! The main thread runs `__main__` exactly as `python` would (see [`embed`]).
//! A Rust control thread listens on the control socket and runs updates. It
//! blocks in `accept` without the GIL, so between updates the program pays
//! nothing: no trace function, no timer, no thread taking the GIL.

pub mod autoreload;
pub mod embed;
pub mod fork;
pub mod pymodule;
pub mod python;
pub mod service;
pub mod shim;

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use pyo3::prelude::*;

use crate::control;
use crate::process::loaded;
use crate::process::state::{self, ProcessState};
use crate::process::tree::Identity;
use embed::{Command, Invocation, Target};

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
    /// Whether `sys.executable` is the tree's stand-in for python, so that
    /// spawn and forkserver children join the tree ([`shim`]).
    pub spawn_members: bool,
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

    // Before any thread of ours exists, so every fork is counted.
    crate::process::per_process::install_fork_counter();
    control::server::configure();
    let listener = control::server::Listener::bind().context("could not open the control socket")?;
    let runtime_dir = listener.path().parent().map(Path::to_path_buf).unwrap_or_default();
    let state = state::install(ProcessState::new(
        name,
        options.version.clone(),
        Identity::root(runtime_dir),
        options.rollback_depth,
    ));
    let shim = if options.spawn_members {
        shim::install(&state.identity, &python, &state.name, options.rollback_depth)
            .map_err(|e| {
                crate::process::log(format!(
                    "pyreload: children started with sys.executable will not be members of the program's tree \
                     (they cannot be updated): {e:#}"
                ))
            })
            .ok()
    } else {
        None
    };
    pyo3::append_to_inittab!(pyreload_module);
    // Before the interpreter starts, so every module's source is seen.
    loaded::install();

    embed::initialize(&Invocation {
        program_name: python.into_os_string(),
        command: Command::Run {
            target: options.target,
            args: options.args,
        },
    });
    Python::attach(|py| {
        if let Some(shim) = &shim {
            shim::set_executable(py, shim)?;
        }
        register_hooks(py)
    })
    .context("could not register the exit and fork hooks")?;

    remove_at_exit();
    if reload {
        autoreload::spawn(state, program_dir)?;
    }
    control::server::spawn(listener, service::Service::handler()).context("could not start the control thread")?;
    Ok(embed::run_main())
}

/// Removes the control socket when the process exits normally. `sys.exit()`
/// ends the process from inside `Py_RunMain` through C `exit()`, so the
/// cleanup must be a C `atexit` handler rather than code after the call. A
/// program killed by a signal leaves the socket behind; clients and the next
/// `pyreload run` recognise it as stale and remove it.
///
/// Members run the same handler: each removes its own member socket (the
/// state it reads is its own, see [`fork`]). The root removes the tree's
/// directory if no member is left in it; a member that outlived the root
/// (multiprocessing's forkserver ends when the root has exited) does that
/// in its place.
pub(crate) fn remove_at_exit() {
    extern "C" fn remove_socket() {
        let Some(state) = state::try_current() else { return };
        state::remove_own_socket(&state.socket_path);
        let identity = &state.identity;
        let last = identity.is_root() || !crate::process::runtime_dir::process_alive(identity.root_pid);
        if last && state.pid == std::process::id() {
            crate::process::tree::remove_tree(&identity.tree_dir());
        }
    }
    // SAFETY: `remove_socket` is a plain `extern "C" fn()` that reads the
    // process state, installed before registration and never freed.
    unsafe {
        nix::libc::atexit(remove_socket);
    }
}

/// The module registered in the interpreter's inittab under the name
/// `pyreload`.
use pymodule::pyreload as pyreload_module;

/// Registers the `atexit` hook and the fork hook (both cannot be removed,
/// so once, here, from Rust).
pub(crate) fn register_hooks(py: Python<'_>) -> PyResult<()> {
    let module = py.import("pyreload")?;
    let hook = module.getattr("_host_exiting")?;
    py.import("atexit")?.call_method1("register", (hook,))?;
    let kwargs = pyo3::types::PyDict::new(py);
    kwargs.set_item("after_in_child", module.getattr("_after_fork_in_child")?)?;
    kwargs.set_item("after_in_parent", module.getattr("_after_fork_in_parent")?)?;
    // From 3.12 `os.fork()` warns when the process has other threads; on
    // 3.12 the idle ones of pyreload's are stopped around the fork
    // (`fork::before` says why not on 3.13).
    #[cfg(all(Py_3_12, not(Py_3_13)))]
    {
        kwargs.set_item("before", module.getattr("_before_fork")?)?;
    }
    py.import("os")?.call_method("register_at_fork", (), Some(&kwargs))?;
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
