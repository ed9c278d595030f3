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
pub const BUILD_PYTHON_VERSION: &str = env!("PYRELOAD_BUILD_PYTHON_VERSION");

/// The executable path to give CPython as `program_name`.
pub fn resolve() -> Result<PathBuf> {
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
                "the virtualenv at {} uses Python {version}, but this pyreload embeds Python {BUILD_PYTHON_VERSION} ({BUILD_PYTHON})\n\
                 help: rebuild pyreload with that interpreter: PYO3_PYTHON={} cargo build --release",
                venv.display(),
                python.display()
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
