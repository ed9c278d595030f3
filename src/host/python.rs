//! Which `python` the embedded interpreter impersonates.
//!
//! The binary is linked to one libpython (the build interpreter's, through an
//! rpath). What may vary at run time is the environment around it: an active
//! virtualenv must give the same `sys.prefix`, `sys.path` and site-packages
//! as the venv's own `python`. CPython derives all of those from
//! `program_name`, so that is what we choose here.

use std::path::PathBuf;

use anyhow::{bail, Result};

/// The interpreter pyreload was built against.
pub const BUILD_PYTHON: &str = env!("PYRELOAD_BUILD_PYTHON");
/// Its `major.minor` version.
pub use crate::process::BUILD_PYTHON_VERSION;
/// The directory of its libpython, where the rpath points.
const BUILD_LIBDIR: &str = env!("PYRELOAD_BUILD_LIBDIR");

/// How to get a `pyreload` for another interpreter, for error messages.
fn rebuild_help(python: &std::path::Path) -> String {
    format!(
        "help: build pyreload for that interpreter: PYO3_PYTHON={} cargo build --release (or `pip install .` of the pyreload checkout with it)",
        python.display()
    )
}

/// Refuses to go on if the libpython this process loaded is not the build
/// interpreter's: another copy (say, from the loader cache after that
/// interpreter was removed) would give another `sys.path` and, for another
/// version, another thread-state layout.
pub fn check_loaded_libpython() -> Result<()> {
    // SAFETY: Py_GetVersion returns a static NUL-terminated string; it may
    // be called before the interpreter is initialised.
    let running = unsafe { std::ffi::CStr::from_ptr(pyo3::ffi::Py_GetVersion()) }.to_string_lossy();
    let running = running.split_whitespace().next().unwrap_or_default().to_string();
    if !running.starts_with(&format!("{BUILD_PYTHON_VERSION}.")) {
        bail!(
            "this pyreload was built for Python {BUILD_PYTHON_VERSION} ({BUILD_PYTHON}) but loaded the libpython of Python {running}\n{}",
            rebuild_help(std::path::Path::new(BUILD_PYTHON))
        );
    }
    let Ok(maps) = std::fs::read_to_string("/proc/self/maps") else {
        return Ok(());
    };
    let loaded = maps
        .lines()
        .filter_map(|line| line.split_whitespace().nth(5))
        .find(|path| path.rsplit('/').next().is_some_and(|f| f.starts_with("libpython")));
    if let (Some(loaded), false) = (loaded, BUILD_LIBDIR.is_empty()) {
        let dir = |p: &std::path::Path| p.canonicalize().unwrap_or_else(|_| p.to_path_buf());
        let loaded_dir = dir(std::path::Path::new(loaded)
            .parent()
            .unwrap_or(std::path::Path::new("/")));
        if loaded_dir != dir(std::path::Path::new(BUILD_LIBDIR)) {
            bail!(
                "this pyreload was built for {BUILD_PYTHON}, whose libpython is in {BUILD_LIBDIR}, but loaded {loaded}\n\
                 help: reinstall that interpreter, or rebuild pyreload for the one you want: PYO3_PYTHON=/path/to/python3 cargo build --release"
            );
        }
    }
    Ok(())
}

/// The executable path to give CPython as `program_name`.
pub fn resolve() -> Result<PathBuf> {
    check_loaded_libpython()?;
    let Some(venv) = std::env::var_os("VIRTUAL_ENV").filter(|v| !v.is_empty()) else {
        return Ok(PathBuf::from(BUILD_PYTHON));
    };
    let venv = PathBuf::from(venv);
    let python = venv.join("bin").join("python");
    if !python.exists() {
        bail!(
            "VIRTUAL_ENV is set to {} but {} does not exist\n\
             help: activate a working virtualenv, or unset VIRTUAL_ENV to use {}",
            venv.display(),
            python.display(),
            BUILD_PYTHON
        );
    }
    if let Some(version) = venv_version(&venv) {
        if !version.starts_with(&format!("{BUILD_PYTHON_VERSION}.")) && version != BUILD_PYTHON_VERSION {
            bail!(
                "the virtualenv at {} uses Python {version}, but this pyreload embeds Python {BUILD_PYTHON_VERSION} ({BUILD_PYTHON})\n{}\n\
                 help: or run the program outside that virtualenv (unset VIRTUAL_ENV)",
                venv.display(),
                rebuild_help(&python)
            );
        }
    }
    Ok(python)
}

/// The `version` (or `version_info`) line of the venv's `pyvenv.cfg`.
fn venv_version(venv: &std::path::Path) -> Option<String> {
    let cfg = std::fs::read_to_string(venv.join("pyvenv.cfg")).ok()?;
    cfg.lines().find_map(|line| {
        let (key, value) = line.split_once('=')?;
        matches!(key.trim(), "version" | "version_info").then(|| value.trim().to_string())
    })
}
