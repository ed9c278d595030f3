//! Where control sockets live.
//!
//! Whoever can connect to a control socket can run code as the program's
//! user, so sockets live in a directory only that user can enter (0700), are
//! themselves 0600, and the server checks each peer's uid as well.

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// Environment variable that overrides the socket directory. Tests use it to
/// keep their programs apart; operators can use it to choose a location.
pub const ENV_VAR: &str = "PYRELOAD_RUNTIME_DIR";

/// The directory holding this user's control sockets, without creating it.
pub fn path() -> PathBuf {
    if let Some(dir) = std::env::var_os(ENV_VAR).filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    if let Some(xdg) = std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(xdg).join("pyreload");
    }
    std::env::temp_dir().join(format!("pyreload-{}", nix::unistd::getuid()))
}

/// Creates the directory if needed and checks that it is private to us.
pub fn ensure() -> Result<PathBuf> {
    let dir = path();
    match fs::DirBuilder::new().mode(0o700).recursive(true).create(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e).with_context(|| format!("could not create {}", dir.display())),
    }
    check_private(&dir)?;
    Ok(dir)
}

/// Refuses a directory that another user owns or could enter: a socket
/// there could be replaced or reached by someone else.
pub fn check_private(dir: &Path) -> Result<()> {
    let meta = fs::symlink_metadata(dir).with_context(|| format!("could not inspect {}", dir.display()))?;
    if !meta.is_dir() {
        bail!("{} is not a directory", dir.display());
    }
    let uid = nix::unistd::getuid().as_raw();
    if meta.uid() != uid {
        bail!(
            "{} belongs to uid {}, not to you (uid {uid})\nhelp: set {ENV_VAR} to a directory you own",
            dir.display(),
            meta.uid()
        );
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        bail!(
            "{} has mode {mode:03o}; control sockets need a private directory\nhelp: chmod 700 {}",
            dir.display(),
            dir.display()
        );
    }
    Ok(())
}

/// The socket path of the program with process id `pid`.
pub fn socket_for_pid(dir: &Path, pid: u32) -> PathBuf {
    dir.join(format!("{pid}.sock"))
}

/// Every `<pid>.sock` in the directory, with its pid.
pub fn sockets(dir: &Path) -> Vec<(u32, PathBuf)> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut found: Vec<(u32, PathBuf)> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let path = e.path();
            let pid = path.file_name()?.to_str()?.strip_suffix(".sock")?.parse().ok()?;
            Some((pid, path))
        })
        .collect();
    found.sort();
    found
}

/// Whether a process with this pid exists and has not exited (it may belong
/// to anyone). A zombie, exited but not yet reaped by its parent, counts as
/// gone: it will never answer.
pub fn process_alive(pid: u32) -> bool {
    let Ok(raw) = i32::try_from(pid) else { return false };
    let exists = match nix::sys::signal::kill(nix::unistd::Pid::from_raw(raw), None) {
        Ok(()) => true,
        Err(nix::errno::Errno::EPERM) => true,
        Err(_) => false,
    };
    exists && !is_zombie(pid)
}

fn is_zombie(pid: u32) -> bool {
    // /proc/<pid>/stat: "pid (comm) S ...", where comm may hold spaces and
    // parentheses, so the state is read after the last ')'.
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            stat.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}
