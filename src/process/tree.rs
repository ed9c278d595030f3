//! A program's process tree: the root that `pyreload run` started and the
//! members forked from it, at any depth (gunicorn workers,
//! `multiprocessing` fork children, their children).
//!
//! Layout, in the runtime directory ([`super::runtime_dir`]):
//!
//! ```text
//! <runtime>/<rootpid>.sock              the root; what `status`/`apply` discover as a program
//! <runtime>/tree-<rootpid>/             0700, made by the root (or the first member)
//! <runtime>/tree-<rootpid>/<pid>.sock   0600, one per member
//! <runtime>/tree-<rootpid>/bin/python*  the stand-in for python in sys.executable
//! <runtime>/tree-<rootpid>/shim.json    what it stands in for (`host::shim`)
//! ```
//!
//! Members are found by listing the directory; a fork sends no message.
//! A member's entry is stale when its process is gone (`os._exit` and
//! SIGKILL leave the file), when it `exec`'d (its listener was
//! close-on-exec: the connection is refused), or when the pid was reused
//! (the process started after the socket was made, read from
//! `/proc/<pid>/stat`). [`members`] prunes those as it lists.

use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Where a process sits in its program's tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub pid: u32,
    /// The member (or root) it was forked from; for the root, its parent.
    pub ppid: u32,
    pub root_pid: u32,
    /// The directory holding the root's socket.
    pub runtime_dir: PathBuf,
}

impl Identity {
    /// The root: the process `pyreload run` started, with its socket in
    /// `runtime_dir`.
    pub fn root(runtime_dir: PathBuf) -> Identity {
        let pid = std::process::id();
        Identity {
            pid,
            ppid: nix::unistd::getppid().as_raw() as u32,
            root_pid: pid,
            runtime_dir,
        }
    }

    /// This process, just forked from `parent`. Makes only `getpid` and
    /// `getppid` calls.
    pub fn forked_from(parent: &Identity) -> Identity {
        Identity {
            pid: std::process::id(),
            ppid: parent.pid,
            root_pid: parent.root_pid,
            runtime_dir: parent.runtime_dir.clone(),
        }
    }

    /// This process, started with `exec` (multiprocessing's spawn) by a
    /// process of the tree whose root is `root_pid`: its parent is
    /// whoever started it.
    pub fn spawned(runtime_dir: PathBuf, root_pid: u32) -> Identity {
        Identity {
            pid: std::process::id(),
            ppid: nix::unistd::getppid().as_raw() as u32,
            root_pid,
            runtime_dir,
        }
    }

    pub fn is_root(&self) -> bool {
        self.pid == self.root_pid
    }

    /// `<runtime>/tree-<rootpid>`, where the members' sockets are.
    pub fn tree_dir(&self) -> PathBuf {
        tree_dir(&self.runtime_dir, self.root_pid)
    }

    /// This process's control socket: the root's `<runtime>/<pid>.sock`,
    /// or a member's `<tree dir>/<pid>.sock`.
    pub fn socket_path(&self) -> PathBuf {
        if self.is_root() {
            super::runtime_dir::socket_for_pid(&self.runtime_dir, self.pid)
        } else {
            member_socket_path(&self.tree_dir(), self.pid)
        }
    }
}

/// `os.fork()`s this process has made, counted by the `after_in_parent`
/// hook. A child forked just before its parent froze runs the old version
/// and must take part; the tree looks for such children (in `/proc`, which
/// is slow while everyone is stopped) only in a member whose count moved
/// since it was invited.
static FORKS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Counts one fork (in the parent).
pub fn note_fork() {
    FORKS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

/// How many forks this process has made.
pub fn forks() -> u64 {
    FORKS.load(std::sync::atomic::Ordering::Relaxed)
}

/// The directory of the members of the tree whose root is `root_pid`.
pub fn tree_dir(runtime_dir: &Path, root_pid: u32) -> PathBuf {
    runtime_dir.join(format!("tree-{root_pid}"))
}

/// The socket of member `pid` in `tree_dir`.
pub fn member_socket_path(tree_dir: &Path, pid: u32) -> PathBuf {
    tree_dir.join(format!("{pid}.sock"))
}

/// The file a tree's first member creates (see [`has_had_members`]).
pub fn members_marker(tree_dir: &Path) -> PathBuf {
    tree_dir.join("had-members")
}

/// Whether any process ever became a member of the tree in `tree_dir`:
/// such a program (gunicorn's master replacing all its workers) can have
/// none at one moment and fork one the next.
pub fn has_had_members(tree_dir: &Path) -> bool {
    members_marker(tree_dir).exists()
}

/// The root pid named by a `tree-<pid>` directory entry.
pub fn tree_root_of(name: &str) -> Option<u32> {
    name.strip_prefix("tree-")?.parse().ok()
}

/// A live member, as [`members`] found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub pid: u32,
    pub ppid: u32,
    pub socket: PathBuf,
    /// Clock ticks since boot (see [`ProcStat::start_ticks`]).
    pub start_ticks: u64,
}

/// What `/proc/<pid>/stat` says about a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcStat {
    pub ppid: u32,
    /// Field 22, `starttime`: clock ticks after boot.
    pub start_ticks: u64,
    pub zombie: bool,
}

/// Reads `/proc/<pid>/stat`; None when the process is gone.
pub fn proc_stat(pid: u32) -> Option<ProcStat> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) S ppid ...": comm may hold spaces and parentheses, so the
    // fields are counted after the last ')'.
    let (_, rest) = stat.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // fields[0] is field 3 (state); field n is fields[n - 3].
    Some(ProcStat {
        zombie: fields.first()?.starts_with('Z'),
        ppid: fields.get(1)?.parse().ok()?,
        start_ticks: fields.get(19)?.parse().ok()?,
    })
}

/// The command line of `pid` as `ps` shows it: the arguments joined by
/// spaces (a proctitle set by `setproctitle` shows as set).
pub fn role(pid: u32) -> String {
    let raw = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let text = String::from_utf8_lossy(&raw);
    text.split('\0').filter(|a| !a.is_empty()).collect::<Vec<_>>().join(" ")
}

/// When the process started, as seconds since the Unix epoch, from its
/// start ticks: boot time (now on the realtime clock minus now on the
/// boot-time clock, exact to the µs) plus the ticks.
fn start_unix_seconds(start_ticks: u64) -> Option<f64> {
    use nix::time::{clock_gettime, ClockId};
    let real = clock_gettime(ClockId::CLOCK_REALTIME).ok()?;
    let boot = clock_gettime(ClockId::CLOCK_BOOTTIME).ok()?;
    let secs = |t: nix::sys::time::TimeSpec| t.tv_sec() as f64 + t.tv_nsec() as f64 * 1e-9;
    // SAFETY: sysconf only reads a constant.
    let hz = unsafe { nix::libc::sysconf(nix::libc::_SC_CLK_TCK) };
    let hz = if hz > 0 { hz as f64 } else { 100.0 };
    Some(secs(real) - secs(boot) + start_ticks as f64 / hz)
}

/// Why a member's entry is stale, if it is.
fn stale(pid: u32, socket: &Path) -> Result<ProcStat, &'static str> {
    let stat = match proc_stat(pid) {
        Some(s) if !s.zombie => s,
        _ => return Err("its process is gone"),
    };
    // A socket made before its process started belongs to an earlier
    // process with the same pid. The start time is floored to a tick and
    // the socket is made after the start, so one tick of slack is enough.
    let made = fs::symlink_metadata(socket).map_err(|_| "its socket is gone")?;
    let made = made.mtime() as f64 + made.mtime_nsec() as f64 * 1e-9;
    if let Some(started) = start_unix_seconds(stat.start_ticks) {
        if started > made + 0.02 {
            return Err("its pid was reused");
        }
    }
    // An exec'd member's listener was close-on-exec; nobody listens.
    match std::os::unix::net::UnixStream::connect(socket) {
        Ok(_) => Ok(stat),
        Err(e) if matches!(e.kind(), io::ErrorKind::ConnectionRefused | io::ErrorKind::NotFound) => {
            Err("nobody listens on its socket (it exec'd)")
        }
        // Busy (a full backlog) or anything else: alive, as far as we know.
        Err(_) => Ok(stat),
    }
}

/// The live members of the tree in `tree_dir`, by pid, other than
/// `except` (the caller itself, usually). Stale entries are removed.
///
/// Costs a `readdir`, then per member a read of `/proc/<pid>/stat`, a
/// `stat` of its socket and one `connect` (closed at once; the member's
/// control thread sees an empty connection).
pub fn members(tree_dir: &Path, except: u32) -> Vec<Member> {
    let Ok(entries) = fs::read_dir(tree_dir) else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for entry in entries.filter_map(|e| e.ok()) {
        let socket = entry.path();
        let Some(pid) = socket
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".sock"))
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == except {
            continue;
        }
        match stale(pid, &socket) {
            Ok(stat) => found.push(Member {
                pid,
                ppid: stat.ppid,
                socket,
                start_ticks: stat.start_ticks,
            }),
            Err(_) => {
                let _ = fs::remove_file(&socket);
            }
        }
    }
    found.sort_by_key(|m| m.pid);
    found
}

/// Removes the tree directories of roots that no longer run, with whatever
/// member sockets they still hold. Called by a root as it starts.
pub fn prune_dead_trees(runtime_dir: &Path) {
    let Ok(entries) = fs::read_dir(runtime_dir) else { return };
    for entry in entries.filter_map(|e| e.ok()) {
        let Some(root) = entry.file_name().to_str().and_then(tree_root_of) else {
            continue;
        };
        if !super::runtime_dir::process_alive(root) {
            remove_tree(&entry.path());
        }
    }
}

/// Removes a tree directory's stale sockets, and then, if no member is
/// left in it, the rest (the python stand-in) and the directory. A root
/// calls it as it exits; live members keep theirs, and the stand-in their
/// own children are started with.
pub fn remove_tree(dir: &Path) {
    let mut alive = false;
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.filter_map(|e| e.ok()) {
            let path = entry.path();
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            match name.strip_suffix(".sock").map(str::parse::<u32>) {
                Some(Ok(pid)) if super::runtime_dir::process_alive(pid) => alive = true,
                Some(_) => {
                    let _ = fs::remove_file(&path);
                }
                None => {}
            }
        }
    }
    if !alive {
        let _ = fs::remove_dir_all(dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_stat_is_read() {
        let me = proc_stat(std::process::id()).unwrap();
        assert_eq!(me.ppid, nix::unistd::getppid().as_raw() as u32);
        assert!(!me.zombie);
        assert!(me.start_ticks > 0);
    }

    #[test]
    fn paths() {
        let id = Identity {
            pid: 12,
            ppid: 11,
            root_pid: 10,
            runtime_dir: PathBuf::from("/r"),
        };
        assert_eq!(id.socket_path(), PathBuf::from("/r/tree-10/12.sock"));
        assert_eq!(tree_root_of("tree-10"), Some(10));
        assert_eq!(tree_root_of("10.sock"), None);
    }
}
