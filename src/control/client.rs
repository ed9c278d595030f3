//! The client side: finding the program to talk to, and one request /
//! response exchange with it.

use std::io;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::protocol::{read_frame, write_frame, MemberInfo, ProgramInfo, Request, Response, PROTOCOL_VERSION};
use super::runtime_dir;
use crate::diagnostic::Problem;

/// How the user named the program.
#[derive(Debug, Clone)]
pub enum Selector {
    Pid(u32),
    Socket(PathBuf),
    /// The only program running, or the only one with this name.
    Auto {
        program: Option<String>,
    },
}

/// A control socket known to answer, with what it said about itself.
#[derive(Debug, Clone)]
pub struct Target {
    pub socket: PathBuf,
    pub info: ProgramInfo,
}

/// Why no program could be chosen. Each message tells the user what to do.
#[derive(Debug, thiserror::Error)]
pub enum FindError {
    #[error("no program is running under `pyreload run` (looked in {dir})")]
    NoneRunning { dir: PathBuf },
    #[error("no running program is named `{name}` (looked in {dir})")]
    NoneNamed {
        name: String,
        dir: PathBuf,
        running: String,
    },
    #[error("{count} programs match; choose one with --pid or --socket")]
    Ambiguous { count: usize, list: String },
    #[error("could not reach the program at {socket}")]
    Unreachable { socket: PathBuf, source: io::Error },
    #[error("cannot look for programs in {dir}: {source}")]
    Unreadable { dir: PathBuf, source: io::Error },
    #[error("no program with pid {pid} is running under `pyreload run` (no socket at {socket})")]
    NoPid { pid: u32, socket: PathBuf },
}

impl FindError {
    /// The error as every other pyreload error is shown: the message, and
    /// a help that says what to do about it.
    pub fn problem(&self) -> Problem {
        let problem = Problem::new(self.to_string());
        match self {
            FindError::NoneRunning { .. } => problem.with_help(
                "start it with `pyreload run ...`; a program started with another PYRELOAD_RUNTIME_DIR is reached with --socket",
            ),
            FindError::NoneNamed { running, .. } => problem.with_help(format!(
                "running now:\n{running}\nname one of these, or choose one with --pid"
            )),
            FindError::Ambiguous { list, .. } => problem.with_help(format!("running now:\n{list}")),
            FindError::Unreachable { source, .. } => problem
                .caused_by(source.to_string())
                .with_help("`pyreload status` lists the programs that answer"),
            FindError::Unreadable { .. } => problem.with_help(
                "control sockets are private to the user who started the program; run pyreload as that user, or set PYRELOAD_RUNTIME_DIR to your own directory",
            ),
            FindError::NoPid { .. } => problem.with_help("`pyreload status` lists the programs running under `pyreload run`"),
        }
    }
}

/// Resolves a selector to a program that answers.
pub fn find(selector: &Selector) -> Result<Target, FindError> {
    match selector {
        Selector::Socket(socket) => probe(socket).map_err(|source| FindError::Unreachable {
            socket: socket.clone(),
            source,
        }),
        Selector::Pid(pid) => {
            let socket = runtime_dir::socket_for_pid(&runtime_dir::path(), *pid);
            if !socket.exists() {
                return Err(FindError::NoPid { pid: *pid, socket });
            }
            probe(&socket).map_err(|source| FindError::Unreachable { socket, source })
        }
        Selector::Auto { program } => find_auto(program.as_deref()),
    }
}

fn find_auto(program: Option<&str>) -> Result<Target, FindError> {
    let mut matching = find_all(program)?;
    match matching.len() {
        1 => Ok(matching.remove(0)),
        count => Err(FindError::Ambiguous {
            count,
            list: describe_all(&matching, "\n"),
        }),
    }
}

/// Every program that answers in the runtime directory, or every one with
/// this name; at least one, or an error that says why there is none.
pub fn find_all(program: Option<&str>) -> Result<Vec<Target>, FindError> {
    let dir = runtime_dir::path();
    if let Err(e) = std::fs::read_dir(&dir) {
        if e.kind() == io::ErrorKind::PermissionDenied {
            return Err(FindError::Unreadable { dir, source: e });
        }
    }
    let mut live = Vec::new();
    for (pid, socket) in runtime_dir::sockets(&dir) {
        match probe(&socket) {
            Ok(target) => live.push(target),
            // A socket whose process is gone is left over from a program
            // that was killed; nobody will ever answer on it.
            Err(_) if !runtime_dir::process_alive(pid) => {
                let _ = std::fs::remove_file(&socket);
            }
            Err(_) => {}
        }
    }
    if live.is_empty() {
        return Err(FindError::NoneRunning { dir });
    }
    live.sort_by_key(|t| t.info.pid);
    let matching: Vec<Target> = match program {
        Some(name) => live.iter().filter(|t| t.info.name == name).cloned().collect(),
        None => live.clone(),
    };
    if matching.is_empty() {
        return Err(FindError::NoneNamed {
            name: program.unwrap_or_default().to_string(),
            dir,
            running: describe_all(&live, "\n"),
        });
    }
    Ok(matching)
}

fn describe_all(targets: &[Target], sep: &str) -> String {
    targets
        .iter()
        .map(|t| {
            format!(
                "  pid {} `{}` version {}",
                t.info.pid,
                t.info.name,
                t.info.version.as_deref().unwrap_or("(none)")
            )
        })
        .collect::<Vec<_>>()
        .join(sep)
}

fn probe(socket: &Path) -> io::Result<Target> {
    match exchange(
        socket,
        &Request::Status {
            protocol: PROTOCOL_VERSION,
        },
        Some(Duration::from_secs(5)),
    )? {
        Response::Status(info) => Ok(Target {
            socket: socket.to_path_buf(),
            info,
        }),
        Response::Error(problem) => Err(io::Error::other(problem.message)),
        Response::Report(_)
        | Response::Sources { .. }
        | Response::Loaded(_)
        | Response::Member(_)
        | Response::Progress { .. }
        | Response::Prepared { .. }
        | Response::Fate(_) => Err(io::Error::other("unexpected answer to a status request")),
    }
}

/// Sends one request and waits for its response. `timeout` bounds the wait;
/// `None` waits as long as the host takes (an apply may wait for a safe
/// point, bounded by the spec's own timeout).
pub fn exchange(socket: &Path, request: &Request, timeout: Option<Duration>) -> io::Result<Response> {
    // Registered: a hosted program that asks its members (the root's
    // `status`) and forks meanwhile must not leave this open in the child.
    let mut stream = crate::process::fds::Tracked::new(UnixStream::connect(socket)?);
    let stream = &mut stream.socket;
    stream.set_read_timeout(timeout)?;
    // A program that refuses the connection (another user's, or too busy)
    // answers at once and closes, perhaps before our request is written:
    // its answer still says more than the broken pipe.
    let written = write_frame(&mut *stream, request);
    let answer = read_frame(&mut *stream);
    if let (Err(e), Err(_)) = (&written, &answer) {
        return Err(io::Error::new(e.kind(), e.to_string()));
    }
    answer.map_err(|e| match e {
        super::protocol::FrameError::Io(e) => e,
        super::protocol::FrameError::Closed => io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the program closed the connection without answering (did it exit?)",
        ),
        other => io::Error::other(other.to_string()),
    })
}

/// How long the root waits for each member's answer to `status`.
pub const MEMBER_TIMEOUT: Duration = Duration::from_secs(2);
/// How many members the root asks at once.
const MEMBER_FAN_OUT: usize = 16;

/// Asks every live member of the tree in `tree_dir` (other than `except`,
/// the asker) what it is, [`MEMBER_FAN_OUT`] at a time, each bounded by
/// `timeout`. A member that does not answer is listed with why
/// (`unreachable`), from what `/proc` says about it. Stale entries are
/// pruned first ([`crate::process::tree::members`]).
pub fn member_status(tree_dir: &Path, except: u32, timeout: Duration) -> Vec<MemberInfo> {
    let members = crate::process::tree::members(tree_dir, except);
    let mut out = Vec::with_capacity(members.len());
    for batch in members.chunks(MEMBER_FAN_OUT) {
        std::thread::scope(|scope| {
            let asked: Vec<_> = batch
                .iter()
                .map(|m| scope.spawn(move || ask_member(m, timeout)))
                .collect();
            for (m, answer) in batch.iter().zip(asked) {
                out.push(
                    answer
                        .join()
                        .unwrap_or_else(|_| unreachable_member(m, "the query panicked".into())),
                );
            }
        });
    }
    out
}

fn ask_member(member: &crate::process::tree::Member, timeout: Duration) -> MemberInfo {
    let request = Request::MemberStatus {
        protocol: PROTOCOL_VERSION,
    };
    match exchange(&member.socket, &request, Some(timeout)) {
        Ok(Response::Member(info)) => info,
        Ok(Response::Error(problem)) => unreachable_member(member, problem.message),
        Ok(_) => unreachable_member(member, "it answered with something other than its status".into()),
        Err(e) => unreachable_member(member, e.to_string()),
    }
}

fn unreachable_member(member: &crate::process::tree::Member, why: String) -> MemberInfo {
    MemberInfo {
        pid: member.pid,
        ppid: member.ppid,
        root_pid: 0,
        role: crate::process::tree::role(member.pid),
        version: None,
        socket: member.socket.display().to_string(),
        start_ticks: member.start_ticks,
        in_progress: None,
        exiting: false,
        unreachable: Some(why),
    }
}
