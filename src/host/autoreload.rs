//! `pyreload run --reload`: reload the program's own modules when their
//! files change, through the same engine as `pyreload apply`.
//!
//! It watches the program's directory (`sys.path[0]`). When `.py` files of
//! loaded modules change, it builds a spec for them and applies it: the same
//! safe points, stopped world and rollback. So a file saved with a syntax
//! error, or one whose new body raises, is refused and logged, and the
//! program goes on with what it had. The watching thread blocks on the
//! kernel, so a program that changes no file pays nothing.

use std::path::PathBuf;

use anyhow::Result;

use crate::engine;
use crate::process::state::ProcessState;

/// Starts the watcher thread for `root`. It runs in the root only: a forked
/// member has no such thread.
pub fn spawn(state: &'static ProcessState, root: PathBuf) -> Result<()> {
    let (watcher, batches) = crate::watch::watch(&root, true, |p| p.extension().is_some_and(|e| e == "py"))?;
    crate::process::spawn_service_thread("pyreload-reload", move || {
        let _watcher = watcher;
        for batch in batches {
            reload(state, &batch);
        }
    });
    Ok(())
}

fn reload(state: &ProcessState, files: &[PathBuf]) {
    let modules = match engine::modules_for_files(state, files) {
        Ok(modules) if modules.is_empty() => return,
        Ok(modules) => modules,
        Err(problem) => return crate::process::log(format!("pyreload: could not reload changed files: {problem}")),
    };
    let spec = auto_spec(state.version(), &modules);
    match engine::apply(state, &spec_path(files), &spec, false, None) {
        Ok(report) => crate::process::log(format!("pyreload: {}", report.one_line())),
        Err(problem) => crate::process::log(format!("pyreload: could not reload {}: {problem}", modules.join(", "))),
    }
}

/// A spec that reloads `modules` from their files, at the running version
/// (or "dev" for a program started without one).
fn auto_spec(version: Option<String>, modules: &[String]) -> String {
    let mut spec = format!("[update]\nname = \"reload {}\"\n", modules.join(", "));
    if let Some(v) = &version {
        spec.push_str(&format!("from = {v:?}\n"));
    }
    spec.push_str(&format!("to = {:?}\n", version.as_deref().unwrap_or("dev")));
    for m in modules {
        spec.push_str(&format!("\n[[reload]]\nmodule = {m:?}\n"));
    }
    spec.push_str("\n[safe_point]\ntimeout_ms = 5000\n");
    spec
}

/// What errors name as the spec: there is no file, so the changed files.
fn spec_path(files: &[PathBuf]) -> String {
    format!(
        "<pyreload run --reload: {}>",
        files
            .iter()
            .map(|f| f.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    )
}
