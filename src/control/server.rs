//! The host side of the control channel: a Rust thread that accepts
//! connections and serves requests one connection per thread.
//!
//! The accept loop blocks in the kernel without the GIL, so an idle program
//! pays nothing for being updatable.

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};

use super::protocol::{read_frame, write_frame, FrameError, Request, Response, PROTOCOL_VERSION};
use super::runtime_dir;
use crate::diagnostic::Problem;
use crate::engine;
use crate::engine::progress::ClientGone;
use crate::host::state::HostState;

/// A client has this long to send its whole request once connected;
/// `PYRELOAD_REQUEST_TIMEOUT_MS` overrides it (tests use a short one).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// At most this many connections are served at once; more are closed.
const MAX_CONNECTIONS: usize = 16;

/// A bound control socket that is removed again when dropped unused.
pub struct Listener {
    inner: UnixListener,
    path: PathBuf,
}

impl Listener {
    /// Binds `<runtime dir>/<pid>.sock`, removing sockets left by programs
    /// that no longer exist.
    pub fn bind() -> Result<Listener> {
        let dir = runtime_dir::ensure()?;
        for (pid, path) in runtime_dir::sockets(&dir) {
            if !runtime_dir::process_alive(pid) {
                let _ = std::fs::remove_file(path);
            }
        }
        let path = runtime_dir::socket_for_pid(&dir, std::process::id());
        let _ = std::fs::remove_file(&path);
        let inner = UnixListener::bind(&path).with_context(|| format!("could not bind {}", path.display()))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("could not restrict {}", path.display()))?;
        Ok(Listener { inner, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Starts the control thread. It lives until the process exits.
pub fn spawn(listener: Listener, state: Arc<HostState>) {
    crate::host::spawn_service_thread("pyreload-control", move || serve(listener, state));
}

fn serve(listener: Listener, state: Arc<HostState>) {
    let active = Arc::new(AtomicUsize::new(0));
    let request_timeout = std::env::var("PYRELOAD_REQUEST_TIMEOUT_MS")
        .ok()
        .and_then(|ms| ms.parse().ok())
        .map(Duration::from_millis)
        .unwrap_or(REQUEST_TIMEOUT);
    for stream in listener.inner.incoming() {
        let Ok(mut stream) = stream else { continue };
        if let Err(reason) = check_peer(&stream) {
            eprintln!("pyreload: refused a control connection: {reason}");
            // Say why, without reading anything from a peer we do not trust.
            let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
            let _ = write_frame(
                &mut stream,
                &Response::Error(
                    Problem::new(format!("refused: {reason}"))
                        .with_help("only the user running the program may control it"),
                ),
            );
            continue;
        }
        if active.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
            active.fetch_sub(1, Ordering::SeqCst);
            let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
            let _ = write_frame(
                &mut stream,
                &Response::Error(Problem::new("too many control connections; try again")),
            );
            continue;
        }
        let state = state.clone();
        let active = active.clone();
        let spawned = std::thread::Builder::new().name("pyreload-conn".into()).spawn(move || {
            handle(stream, &state, request_timeout);
            active.fetch_sub(1, Ordering::SeqCst);
        });
        if spawned.is_err() {
            eprintln!("pyreload: could not start a thread for a control connection");
        }
    }
}

/// Only the program's own user may control it, whatever the file modes say.
fn check_peer(stream: &UnixStream) -> Result<(), String> {
    let creds = getsockopt(stream, PeerCredentials).map_err(|e| format!("could not read peer credentials: {e}"))?;
    let me = nix::unistd::getuid().as_raw();
    if creds.uid() != me {
        return Err(format!(
            "peer uid {} (pid {}) is not the program's uid {me}",
            creds.uid(),
            creds.pid()
        ));
    }
    Ok(())
}

fn handle(mut stream: UnixStream, state: &HostState, request_timeout: Duration) {
    let request = read_frame::<Request>(&mut Deadlined::new(&stream, request_timeout));
    let _ = stream.set_read_timeout(None);
    // Held until the answer is written: the exit hook waits for it.
    let mut _owed = None;
    let response = match request {
        Ok(Request::Member {
            protocol,
            spec_path,
            spec_text,
            decision,
        }) if protocol == PROTOCOL_VERSION => {
            let _owed = state.owe_answer();
            return serve_member(stream, state, spec_path, spec_text, decision);
        }
        Ok(request) => {
            _owed = Some(state.owe_answer());
            let gone = || peer_gone(&stream);
            respond(request, state, &gone)
        }
        Err(FrameError::Closed) => return,
        Err(FrameError::Io(e)) if e.kind() == io::ErrorKind::UnexpectedEof => return,
        Err(FrameError::Io(e)) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
            Response::Error(Problem::new(format!(
                "no complete request arrived within {} ms; closing",
                request_timeout.as_millis()
            )))
        }
        Err(e) => Response::Error(Problem::new(format!("bad request: {e}"))),
    };
    let _ = stream.set_write_timeout(Some(Duration::from_secs(5)));
    let _ = write_frame(&mut stream, &response);
}

/// Whether the client is gone: its process ended or it closed the
/// connection. A client that only shut down its writing side still waits
/// for the answer, and is not gone.
fn peer_gone(stream: &UnixStream) -> bool {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use std::os::fd::AsFd;
    let mut fds = [PollFd::new(stream.as_fd(), PollFlags::empty())];
    match poll(&mut fds, PollTimeout::ZERO) {
        Ok(0) | Err(_) => false,
        Ok(_) => fds[0]
            .revents()
            .is_some_and(|r| r.intersects(PollFlags::POLLHUP | PollFlags::POLLERR)),
    }
}

/// Reads from a stream with one deadline for the whole request, not one per
/// `read`: a client that trickles a byte at a time cannot hold a connection
/// open for longer than the deadline.
struct Deadlined<'a> {
    stream: &'a UnixStream,
    deadline: std::time::Instant,
}

impl<'a> Deadlined<'a> {
    fn new(stream: &'a UnixStream, timeout: Duration) -> Self {
        Deadlined {
            stream,
            deadline: std::time::Instant::now() + timeout,
        }
    }
}

impl io::Read for Deadlined<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        self.stream.set_read_timeout(Some(left))?;
        (&mut &*self.stream).read(buf)
    }
}

fn respond(request: Request, state: &HostState, client_gone: ClientGone<'_>) -> Response {
    let protocol = match &request {
        Request::Status { protocol }
        | Request::Collect { protocol }
        | Request::Apply { protocol, .. }
        | Request::Sources { protocol, .. }
        | Request::Loaded { protocol }
        | Request::Rollback { protocol, .. }
        | Request::Member { protocol, .. } => *protocol,
    };
    if protocol != PROTOCOL_VERSION {
        return Response::Error(
            Problem::new(format!(
                "protocol version {protocol} is not supported by this program's pyreload (version {PROTOCOL_VERSION})"
            ))
            .with_help("use the same pyreload binary for `run` and for `apply`"),
        );
    }
    match request {
        Request::Status { .. } => Response::Status(state.info()),
        Request::Collect { .. } => match engine::collect_garbage(state) {
            Ok(()) => Response::Status(state.info()),
            Err(problem) => Response::Error(problem),
        },
        Request::Apply {
            spec_path,
            spec_text,
            dry_run,
            ..
        } => reported(
            crate::tree::apply(state, &spec_path, &spec_text, dry_run, Some(client_gone)),
            dry_run,
        ),
        Request::Sources {
            spec_path, spec_text, ..
        } => match engine::sources(state, &spec_path, &spec_text) {
            Ok(modules) => Response::Sources { modules },
            Err(problem) => Response::Error(problem),
        },
        Request::Loaded { .. } => match engine::running::loaded(state) {
            Ok(program) => Response::Loaded(program),
            Err(problem) => Response::Error(problem),
        },
        Request::Member { .. } => unreachable!("member conversations are served by `serve_member`"),
        Request::Rollback {
            dry_run, timeout_ms, ..
        } => reported(
            engine::rollback::rollback(
                state,
                dry_run,
                std::time::Duration::from_millis(timeout_ms),
                Some(client_gone),
            ),
            dry_run,
        ),
    }
}

/// Answers with the report, logging an update that changed (or tried to
/// change) the program on its stderr.
fn reported(result: Result<crate::report::Report, Problem>, dry_run: bool) -> Response {
    match result {
        Ok(report) => {
            if !dry_run {
                eprintln!("pyreload: {}", report.one_line());
            }
            Response::Report(Box::new(report))
        }
        Err(problem) => Response::Error(problem),
    }
}

/// A tree member's side of a [`Request::Member`] conversation: the engine
/// drives its steps, this carries them.
fn serve_member(stream: UnixStream, state: &HostState, spec_path: String, spec_text: String, decision: String) {
    let Ok(watch) = stream.try_clone() else { return };
    let mut link = StreamLink { stream };
    let gone = move || peer_gone(&watch);
    engine::member::serve(
        state,
        engine::member::Invitation {
            spec_path,
            spec_text,
            decision: PathBuf::from(decision),
        },
        &mut link,
        &gone,
    );
}

/// The member's end of its coordinator's connection.
struct StreamLink {
    stream: UnixStream,
}

impl engine::member::Link for StreamLink {
    fn send(&mut self, reply: &super::member_wire::MemberReply) -> io::Result<()> {
        self.stream.set_write_timeout(Some(Duration::from_secs(5)))?;
        write_frame(&mut self.stream, reply)
    }

    fn recv(&mut self, timeout: Duration) -> io::Result<super::member_wire::Step> {
        read_frame(&mut Deadlined::new(&self.stream, timeout.max(Duration::from_millis(1)))).map_err(|e| match e {
            FrameError::Io(e) => e,
            other => io::Error::other(other.to_string()),
        })
    }
}
