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

/// The children of `pid` now, from `/proc/<pid>/task/*/children` (a child
/// forked by any of its threads).
pub fn children(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for task in tasks.flatten() {
        if let Ok(text) = std::fs::read_to_string(task.path().join("children")) {
            out.extend(text.split_whitespace().filter_map(|c| c.parse::<u32>().ok()));
        }
    }
    out.sort_unstable();
    out.dedup();
    out
}

/// Whether `pid` still runs this very program (a forked child that has not
/// called `exec`): such a child becomes a member as soon as its fork hook
/// has bound its socket.
pub fn runs_this_program(pid: u32) -> bool {
    match (
        std::fs::read_link(format!("/proc/{pid}/exe")),
        std::fs::read_link("/proc/self/exe"),
    ) {
        (Ok(theirs), Ok(ours)) => theirs == ours,
        _ => false,
    }
}

/// How many threads `pid` has. A forked member binds its socket before it
/// starts its control thread, so a child of a member with one thread and no
/// socket is being born, and one with more and no socket is exiting.
pub fn threads(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task")).map_or(0, |d| d.count())
}

/// Children of `pid` that run this program and have no control socket yet
/// because they are being born (see [`threads`]).
pub fn being_born(state: &ProcessState, pid: u32) -> Vec<u32> {
    children(pid)
        .into_iter()
        .filter(|&c| {
            alive(c)
                && runs_this_program(c)
                && threads(c) == 1
                && !tree::member_socket_path(&state.identity.tree_dir(), c).exists()
        })
        .collect()
}
