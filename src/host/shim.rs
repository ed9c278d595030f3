//! The tree's stand-in for `python`: how a process that the program starts
//! with `sys.executable` (multiprocessing's and billiard's spawn and
//! forkserver children, `uvicorn --workers`) can be a member of its tree.
//!
//! A fork hook cannot reach those children: they `exec` a fresh
//! interpreter. So the root makes one that is pyreload:
//!
//! ```text
//! <tree dir>/bin/python3.X, python3, python   symlinks to the pyreload binary
//! <tree dir>/shim.json                         which python to be, the program's name
//! ```
//!
//! and sets `sys.executable` to `bin/<the real python's file name>` before
//! `__main__` runs. `sys._base_executable` stays the real one: `venv`
//! builds new environments from it, and one built on the stand-in would
//! break once the tree is gone.
//!
//! `main()` sends a process whose `argv[0]` is named `python*` here
//! ([`main_if_python`]). Its command line decides what it is:
//!
//! | command line                                            | what the process does                      |
//! |---------------------------------------------------------|--------------------------------------------|
//! | `-c 'from multiprocessing.spawn import spawn_main…'`, `-c 'from multiprocessing.forkserver import main…'`, the same from `billiard`, or `--multiprocessing-fork` / `--billiard-fork` after `-c` | embeds CPython as `pyreload run` does (the real python as `program_name`, the argv verbatim), joins the tree with its own socket and control thread, runs `Py_RunMain`. `sys.executable` stays the stand-in, so its own children join too |
//! | anything else (`-m pip`, a script, the resource tracker, `-c 'print(1)'`) | `execv` of the real python with the same arguments and `argv[0]` = the real path (CPython finds `pyvenv.cfg` from it): byte-for-byte python |
//!
//! A member learns the version it runs from the process that started it
//! (its parent, else the root), as a forked child copies it: one
//! `MemberStatus` request before the interpreter starts. It starts with
//! no history and nothing to roll back: it imported the program from disk.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use pyo3::prelude::*;
use serde::{Deserialize, Serialize};

use super::embed::{self, Command, Invocation};
use crate::control;
use crate::control::protocol::{Request, Response, PROTOCOL_VERSION};
use crate::process::state::{self, ProcessState};
use crate::process::tree::{self, Identity};

/// The file in the tree directory that tells the stand-in what to be.
const SHIM_FILE: &str = "shim.json";
/// How long a new member waits for its parent (or the root) to say which
/// version it runs.
const ASK_VERSION: Duration = Duration::from_secs(2);

/// What `<tree dir>/shim.json` holds.
#[derive(Debug, Serialize, Deserialize)]
struct Impersonation {
    /// The python `pyreload run` impersonates (`host::python::resolve`):
    /// the venv's, or the build interpreter.
    python: PathBuf,
    /// The program's name, as the root has it.
    name: String,
    rollback_depth: usize,
}

/// Makes the tree's stand-in for python (see the module header) and
/// returns the path to give `sys.executable`. For the root, before the
/// interpreter starts.
pub fn install(identity: &Identity, python: &Path, name: &str, rollback_depth: usize) -> Result<PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    let exe = std::env::current_exe().context("could not find the pyreload binary (/proc/self/exe)")?;
    // Replaced or removed since it started (`/proc/self/exe` then ends in
    // " (deleted)"): a symlink to it would not run.
    if !exe.exists() {
        anyhow::bail!("the pyreload binary {} is no longer there", exe.display());
    }
    let dir = identity.tree_dir();
    let bin = dir.join("bin");
    for d in [&dir, &bin] {
        match std::fs::DirBuilder::new().mode(0o700).create(d) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e).with_context(|| format!("could not create {}", d.display())),
        }
    }
    let versioned = format!("python{}", crate::process::BUILD_PYTHON_VERSION);
    // `sys.executable` keeps the real one's file name (`python` in a venv,
    // `python3.11` or `python3` elsewhere) when it looks like a python.
    let own = python
        .file_name()
        .and_then(|n| n.to_str())
        .filter(|n| n.starts_with("python") && !n.contains('/'))
        .unwrap_or(&versioned)
        .to_string();
    let mut names = vec![versioned.clone(), "python3".to_string(), "python".to_string()];
    if !names.contains(&own) {
        names.push(own.clone());
    }
    let pid = std::process::id();
    for n in &names {
        // A leftover of an earlier process with this pid is replaced whole.
        let temporary = bin.join(format!(".{n}.{pid}"));
        let _ = std::fs::remove_file(&temporary);
        std::os::unix::fs::symlink(&exe, &temporary)
            .with_context(|| format!("could not make {}", temporary.display()))?;
        std::fs::rename(&temporary, bin.join(n))
            .with_context(|| format!("could not make {}", bin.join(n).display()))?;
    }
    let file = Impersonation {
        python: python.to_path_buf(),
        name: name.to_string(),
        rollback_depth,
    };
    let temporary = dir.join(format!(".{SHIM_FILE}.{pid}"));
    std::fs::write(&temporary, serde_json::to_vec(&file)?)
        .with_context(|| format!("could not write {}", temporary.display()))?;
    std::fs::rename(&temporary, dir.join(SHIM_FILE))
        .with_context(|| format!("could not write {}", dir.join(SHIM_FILE).display()))?;
    Ok(bin.join(own))
}

/// Sets `sys.executable` (only: see the module header) to the stand-in.
pub fn set_executable(py: Python<'_>, shim: &Path) -> PyResult<()> {
    // A str, as CPython gives it (a `Path` converts to `pathlib.Path`).
    py.import("sys")?.setattr("executable", shim.as_os_str())
}

/// If this process was started as python (its `argv[0]` is named
/// `python*`), runs it as the stand-in and returns its exit status;
/// otherwise None, and `main()` goes on as the `pyreload` command.
pub fn main_if_python() -> Option<i32> {
    let argv: Vec<OsString> = std::env::args_os().collect();
    let file = Path::new(argv.first()?).file_name()?;
    if !file.as_bytes().starts_with(b"python") {
        return None;
    }
    Some(python_mode(argv))
}

fn python_mode(argv: Vec<OsString>) -> i32 {
    let shim = match locate(&argv[0]) {
        Some(shim) => shim,
        None => return stand_in_error(&argv[0], "it is not on PATH"),
    };
    let tree_dir = shim
        .parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let imp: Impersonation = match std::fs::read(tree_dir.join(SHIM_FILE))
        .map_err(anyhow::Error::from)
        .and_then(|t| serde_json::from_slice(&t).map_err(Into::into))
    {
        Ok(imp) => imp,
        Err(e) => {
            return stand_in_error(
                &argv[0],
                &format!("{} cannot be read ({e})", tree_dir.join(SHIM_FILE).display()),
            )
        }
    };
    if !joins_tree(&argv[1..]) {
        return exec_python(&imp.python, &argv);
    }
    match identity_in(&tree_dir) {
        Some(identity) => member(argv, shim, identity, imp),
        // The program that made the stand-in is gone: no tree to join.
        None => exec_python(&imp.python, &argv),
    }
}

/// `argv[0]` as a path: as given when it names a file, else found on PATH
/// as a shell would. Never canonicalised: the symlink's own directory is
/// the tree's.
fn locate(argv0: &OsStr) -> Option<PathBuf> {
    let given = Path::new(argv0);
    if argv0.as_bytes().contains(&b'/') {
        return Some(if given.is_absolute() {
            given.to_path_buf()
        } else {
            std::env::current_dir().ok()?.join(given)
        });
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(given))
        .find(|p| p.exists())
}

fn stand_in_error(argv0: &OsStr, why: &str) -> i32 {
    eprintln!(
        "pyreload: {} is started as python, as the stand-in a `pyreload run` program's tree gives its \
         children in sys.executable, but {why}\n\
         help: run python itself, or the program under `pyreload run` (`--no-spawn-members` turns the stand-in off)",
        Path::new(argv0).display()
    );
    crate::cli::EXIT_USAGE
}

/// Whether a python command line is one that starts a worker of the
/// program (multiprocessing's or billiard's spawn or forkserver child),
/// which joins the tree. Interpreter flags before `-c` are skipped as
/// CPython reads them; anything this does not recognise does not join.
fn joins_tree(args: &[OsString]) -> bool {
    const WORKERS: [&[u8]; 4] = [
        b"from multiprocessing.spawn import spawn_main",
        b"from multiprocessing.forkserver import main",
        b"from billiard.spawn import spawn_main",
        b"from billiard.forkserver import main",
    ];
    let mut i = 0;
    while let Some(arg) = args.get(i) {
        let arg = arg.as_bytes();
        let command = match arg {
            b"-c" => args.get(i + 1).map(|c| (c.as_bytes(), i + 2)),
            // `-W default`, `-X dev`, `--check-hash-based-pycs never`
            b"-W" | b"-X" | b"--check-hash-based-pycs" => {
                i += 2;
                continue;
            }
            // `-Wdefault`, `-Xdev`
            [b'-', b'W' | b'X', ..] => {
                i += 1;
                continue;
            }
            // Flags without a value, alone or together (`-B`, `-sE`), the
            // last perhaps `c` (`-Bc CMD`).
            [b'-', flags @ ..] if !flags.is_empty() && flags.iter().all(u8::is_ascii_alphabetic) => {
                match flags.iter().position(|&f| matches!(f, b'c' | b'm' | b'W' | b'X')) {
                    None => {
                        i += 1;
                        continue;
                    }
                    Some(p) if flags[p] == b'c' && p + 1 == flags.len() => {
                        args.get(i + 1).map(|c| (c.as_bytes(), i + 2))
                    }
                    Some(_) => return false,
                }
            }
            _ => return false,
        };
        let Some((command, rest)) = command else { return false };
        return WORKERS.iter().any(|w| command.trim_ascii_start().starts_with(w))
            || args[rest..]
                .iter()
                .any(|a| matches!(a.as_bytes(), b"--multiprocessing-fork" | b"--billiard-fork"));
    }
    false
}

/// Becomes the real python, with this process's arguments.
fn exec_python(python: &Path, argv: &[OsString]) -> i32 {
    use std::ffi::CString;
    let c = |a: &OsStr| CString::new(a.as_bytes()).expect("argv from the OS has no NUL bytes");
    let path = c(python.as_os_str());
    let mut args = vec![path.clone()];
    args.extend(argv[1..].iter().map(|a| c(a)));
    let e = nix::unistd::execv(&path, &args).unwrap_err();
    eprintln!("pyreload: could not run {}: {e}", python.display());
    127
}

/// This process, as a member of the tree in `tree_dir`, if its root still
/// runs.
fn identity_in(tree_dir: &Path) -> Option<Identity> {
    let root_pid = tree::tree_root_of(tree_dir.file_name()?.to_str()?)?;
    let runtime_dir = tree_dir.parent()?.to_path_buf();
    if !crate::process::runtime_dir::process_alive(root_pid) {
        return None;
    }
    Some(Identity::spawned(runtime_dir, root_pid))
}

/// The version the process that started this one runs: its parent's if
/// the parent is a member (the root included), else the root's.
fn version_of_parent(identity: &Identity) -> Option<String> {
    let socket = |pid: u32| {
        if pid == identity.root_pid {
            crate::process::runtime_dir::socket_for_pid(&identity.runtime_dir, pid)
        } else {
            tree::member_socket_path(&identity.tree_dir(), pid)
        }
    };
    let request = Request::MemberStatus {
        protocol: PROTOCOL_VERSION,
    };
    [identity.ppid, identity.root_pid].into_iter().find_map(|pid| {
        match control::client::exchange(&socket(pid), &request, Some(ASK_VERSION)) {
            Ok(Response::Member(info)) => Some(info.version),
            _ => None,
        }
    })?
}

/// Runs this process as a member of the tree: the interpreter as `pyreload
/// run` starts it, on the verbatim argv.
fn member(argv: Vec<OsString>, shim: PathBuf, identity: Identity, imp: Impersonation) -> i32 {
    if let Err(e) = super::python::check_loaded_libpython() {
        eprintln!(
            "pyreload: {e:#}\npyreload: running {} instead (not a member)",
            imp.python.display()
        );
        return exec_python(&imp.python, &argv);
    }
    let version = version_of_parent(&identity);
    crate::process::per_process::install_fork_counter();
    control::server::configure();
    let state = state::install(ProcessState::new(imp.name, version, identity, imp.rollback_depth));
    pyo3::append_to_inittab!(pyreload_module);
    crate::process::loaded::install();
    embed::initialize(&Invocation {
        program_name: imp.python.into_os_string(),
        command: Command::Verbatim(argv),
    });
    let hooks = Python::attach(|py| {
        set_executable(py, &shim)?;
        super::register_hooks(py)
    });
    if let Err(e) = hooks {
        crate::process::log(format!(
            "pyreload: pid {}: could not register the exit and fork hooks: {e}",
            state.pid
        ));
    }
    super::remove_at_exit();
    let started = control::server::Listener::bind_member(&state.identity)
        .and_then(|listener| control::server::spawn(listener, super::service::Service::handler()).map_err(Into::into));
    if let Err(e) = started {
        crate::process::log(format!(
            "pyreload: pid {}: could not become a member of the program's tree (it cannot be updated): {e:#}",
            state.pid
        ));
    }
    embed::run_main()
}

use super::pymodule::pyreload as pyreload_module;

#[cfg(test)]
mod tests {
    use super::joins_tree;

    fn joins(args: &[&str]) -> bool {
        joins_tree(&args.iter().map(Into::into).collect::<Vec<_>>())
    }

    #[test]
    fn workers_join() {
        assert!(joins(&[
            "-c",
            "from multiprocessing.spawn import spawn_main; spawn_main(tracker_fd=5, pipe_handle=7)",
            "--multiprocessing-fork"
        ]));
        assert!(joins(&[
            "-B",
            "-s",
            "-W",
            "default",
            "-Xdev",
            "-c",
            "from multiprocessing.spawn import spawn_main; spawn_main(pipe_handle=7)",
            "--multiprocessing-fork"
        ]));
        assert!(joins(&[
            "-c",
            "from multiprocessing.forkserver import main; main(3, 4, ['__main__'], **{})"
        ]));
        assert!(joins(&[
            "-c",
            "from billiard.spawn import spawn_main; spawn_main(pipe_handle=7)",
            "--billiard-fork"
        ]));
        assert!(joins(&["-Bc", "import x", "--multiprocessing-fork"]));
    }

    #[test]
    fn everything_else_is_python() {
        assert!(!joins(&[]));
        assert!(!joins(&["-c", "print(1)"]));
        assert!(!joins(&[
            "-c",
            "from multiprocessing.resource_tracker import main;main(5)"
        ]));
        assert!(!joins(&["-m", "pip", "install", "x"]));
        assert!(!joins(&["app.py", "--multiprocessing-fork"]));
        assert!(!joins(&["-", "--multiprocessing-fork"]));
        assert!(!joins(&["-m", "-c", "from multiprocessing.spawn import spawn_main"]));
        assert!(!joins(&["-Ec"]));
    }
}
