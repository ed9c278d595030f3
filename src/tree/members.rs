//! Who is in a program's process tree now: each member's control socket
//! under `<runtime dir>/tree-<root pid>/`, checked against `/proc`.

use std::path::{Path, PathBuf};

/// A live member of the tree, as found on disk and in `/proc`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub pid: u32,
    pub ppid: u32,
    pub socket: PathBuf,
    /// Its command line, as `ps` shows it (gunicorn sets `gunicorn: worker [app]`).
    pub role: String,
}

/// The directory that holds the members' sockets of the tree whose root
/// listens on `root_socket`.
pub fn tree_dir(root_socket: &Path, root_pid: u32) -> PathBuf {
    root_socket
        .parent()
        .unwrap_or_else(|| Path::new("."))
        .join(format!("tree-{root_pid}"))
}

/// The live members of the tree other than the root, by pid. Sockets of
/// processes that are gone are removed.
pub fn list(root_socket: &Path, root_pid: u32) -> Vec<Member> {
    let dir = tree_dir(root_socket, root_pid);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut members = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        let Some(pid) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".sock"))
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        match ppid_of(pid) {
            Some(ppid) => members.push(Member {
                pid,
                ppid,
                socket: path,
                role: role_of(pid),
            }),
            None => {
                let _ = std::fs::remove_file(&path);
            }
        }
    }
    members.sort_by_key(|m| m.pid);
    members
}

/// The parent of a live process; None once it is gone (or a zombie).
pub fn ppid_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // `pid (comm) state ppid ...`; comm may hold spaces and parentheses.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?;
    if state == "Z" || state == "X" {
        return None;
    }
    fields.next()?.parse().ok()
}

/// What a process is, from its command line.
pub fn role_of(pid: u32) -> String {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let words: Vec<String> = raw
        .split(|b| *b == 0)
        .filter(|w| !w.is_empty())
        .map(|w| String::from_utf8_lossy(w).into_owned())
        .collect();
    let line = words.join(" ");
    const LONGEST: usize = 60;
    if line.chars().count() > LONGEST {
        let cut: String = line.chars().take(LONGEST - 3).collect();
        format!("{cut}...")
    } else {
        line
    }
}
