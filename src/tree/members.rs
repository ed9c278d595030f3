//! Who is in a program's process tree now, as the coordinator needs it:
//! the live members (`process::tree`), each with what it is.

use std::path::PathBuf;

use crate::process::state::ProcessState;
use crate::process::tree;

/// A live member of the tree, as found on disk and in `/proc`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub pid: u32,
    pub ppid: u32,
    pub socket: PathBuf,
    /// Its command line, as `ps` shows it (gunicorn sets `gunicorn: worker [app]`).
    pub role: String,
}

/// The live members of this process's tree other than itself.
pub fn others(state: &ProcessState) -> Vec<Member> {
    tree::members(&state.identity.tree_dir(), state.pid)
        .into_iter()
        .map(|m| Member {
            role: role_of(m.pid),
            pid: m.pid,
            ppid: m.ppid,
            socket: m.socket,
        })
        .collect()
}

/// This process, as a member of its own tree.
pub fn this(state: &ProcessState) -> Member {
    Member {
        pid: state.pid,
        ppid: state.identity.ppid,
        socket: state.identity.socket_path(),
        role: role_of(state.pid),
    }
}

/// Whether `pid` is still running (a zombie is not).
pub fn alive(pid: u32) -> bool {
    tree::proc_stat(pid).is_some_and(|s| !s.zombie)
}

/// What a process is, from its command line, short enough for one line.
pub fn role_of(pid: u32) -> String {
    let line = tree::role(pid);
    const LONGEST: usize = 60;
    if line.chars().count() > LONGEST {
        let cut: String = line.chars().take(LONGEST - 3).collect();
        format!("{cut}...")
    } else {
        line
    }
}
