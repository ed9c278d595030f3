//! The host side of the control channel: a Rust thread that accepts
//! connections and serves requests one connection per thread.
//!
//! The accept loop blocks in the kernel without the GIL, so an idle program
//! pays nothing for being updatable. What a request does is not decided
//! here: the server checks the peer and the protocol version, then hands
//! the request to a [`Handler`] (the host's, which calls the engine), so
//! this layer depends on no layer above it. The root and every forked
//! member of a program's tree run this same server, each on its own socket
//! and for its own process.

use std::io;
use std::os::fd::AsRawFd;
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
use crate::process::bell::Ear;
use crate::process::fds::Tracked;
use crate::process::member_wire::{Invitation, Link, MemberReply, Step};
use crate::process::state;
use crate::process::tree::Identity;
use crate::process::ClientGone;

/// A client has this long to send its whole request once connected;
/// `PYRELOAD_REQUEST_TIMEOUT_MS` overrides it (tests use a short one).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// At most this many connections are served at once; more are closed.
const MAX_CONNECTIONS: usize = 16;

/// What a process does with a request its control server received (the
/// protocol version already checked). The host implements it by calling
/// the engine for this process (`host::service`); a tree coordinator
/// will wrap it.
pub trait Handler: Send + Sync {
    /// Serves one request for this process. `client_gone` tells whether
    /// the client stopped waiting (an update uses it to cancel itself).
    fn respond(&self, request: Request, client_gone: ClientGone<'_>) -> Response;

    /// Serves one member conversation of a tree-wide update (see
    /// [`crate::process::member_wire`]) to its end.
    fn serve_member(&self, invitation: Invitation, link: &mut dyn Link, coordinator_gone: ClientGone<'_>);
}

/// A bound control socket, registered as one of this process's control
/// fds (closed in a forked child, see [`crate::process::fds`]).
pub struct Listener {
    inner: Tracked<UnixListener>,
    path: PathBuf,
}

impl Listener {
    /// Binds `<runtime dir>/<pid>.sock` for the root of a program,
    /// removing sockets (and member directories) left by programs that no
    /// longer exist.
    pub fn bind() -> Result<Listener> {
        let dir = runtime_dir::ensure()?;
        for (pid, path) in runtime_dir::sockets(&dir) {
            if !runtime_dir::process_alive(pid) {
                let _ = std::fs::remove_file(path);
            }
        }
        crate::process::tree::prune_dead_trees(&dir);
        let path = runtime_dir::socket_for_pid(&dir, std::process::id());
        let _ = std::fs::remove_file(&path);
        let inner = UnixListener::bind(&path).with_context(|| format!("could not bind {}", path.display()))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("could not restrict {}", path.display()))?;
        // The accept loop polls first; non-blocking, an accept whose
        // connection went away meanwhile returns instead of waiting.
        inner.set_nonblocking(true)?;
        Ok(Listener {
            inner: Tracked::new(inner),
            path,
        })
    }

    /// Binds a forked member's `<runtime>/tree-<rootpid>/<pid>.sock`
    /// (directory 0700, socket 0600), for the fork hook: a few syscalls,
    /// no lock, no environment read.
    ///
    /// The socket is bound and listening under a temporary name first, then
    /// renamed into place, so a root listing the tree never sees the path
    /// before it accepts (it would take that for a member that exec'd, and
    /// remove it).
    pub fn bind_member(identity: &Identity) -> Result<Listener> {
        use std::os::unix::fs::DirBuilderExt;
        let dir = identity.tree_dir();
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e).with_context(|| format!("could not create {}", dir.display())),
        }
        let path = identity.socket_path();
        let temporary = dir.join(format!(".{}.binding", identity.pid));
        let _ = std::fs::remove_file(&temporary);
        let inner =
            UnixListener::bind(&temporary).with_context(|| format!("could not bind {}", temporary.display()))?;
        inner.set_nonblocking(true)?;
        let inner = Tracked::new(inner);
        std::fs::set_permissions(&temporary, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("could not restrict {}", temporary.display()))?;
        std::fs::rename(&temporary, &path)
            .with_context(|| format!("could not move {} to {}", temporary.display(), path.display()))?;
        // Says, for good, that this program has members: its root then
        // updates as a tree even at a moment with none (see
        // `process::tree::has_had_members`). One `stat` after the first.
        let marker = crate::process::tree::members_marker(&dir);
        if !marker.exists() {
            let _ = std::fs::File::create(&marker);
        }
        Ok(Listener { inner, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// How long a client has to send its request, read once when the root
/// starts (never in a fork hook: reading the environment takes a lock).
static REQUEST_TIMEOUT_MS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Reads `PYRELOAD_REQUEST_TIMEOUT_MS`. Call once at startup.
pub fn configure() {
    let ms = std::env::var("PYRELOAD_REQUEST_TIMEOUT_MS")
        .ok()
        .and_then(|ms| ms.parse().ok())
        .unwrap_or(REQUEST_TIMEOUT.as_millis() as u64);
    REQUEST_TIMEOUT_MS.store(ms, Ordering::Relaxed);
}

fn request_timeout() -> Duration {
    match REQUEST_TIMEOUT_MS.load(Ordering::Relaxed) {
        0 => REQUEST_TIMEOUT,
        ms => Duration::from_millis(ms),
    }
}

/// This process's control thread while it runs: what [`pause_for_fork`]
/// needs to stop it and [`resume_after_fork`] to start it again.
#[cfg_attr(not(all(Py_3_12, not(Py_3_13))), allow(dead_code))] // used by the 3.12 fork hooks
struct ControlThread {
    handle: std::thread::JoinHandle<Listener>,
    server: Server,
}

/// What a control thread serves with, kept across a pause.
#[cfg_attr(not(all(Py_3_12, not(Py_3_13))), allow(dead_code))] // used by the 3.12 fork hooks
struct Server {
    handler: Arc<dyn Handler>,
    /// Connections being served now.
    active: Arc<AtomicUsize>,
    /// The connection threads started and not yet joined. Only the control
    /// thread and [`pause_for_fork`] (once the control thread is stopped)
    /// touch it.
    connections: Arc<std::sync::Mutex<Vec<std::thread::JoinHandle<()>>>>,
    /// A byte written here ends the accept loop.
    wake: Tracked<std::os::fd::OwnedFd>,
    woken: Tracked<std::os::fd::OwnedFd>,
}

/// Per process, and only touched with the GIL held (at startup, in the
/// fork hooks, in a member's fork hook), so never contended.
static CONTROL: crate::process::per_process::PerProcess<std::sync::Mutex<Option<ControlThread>>> =
    crate::process::per_process::PerProcess::new(|| std::sync::Mutex::new(None));
/// A control thread stopped by [`pause_for_fork`], to restart.
#[cfg_attr(not(all(Py_3_12, not(Py_3_13))), allow(dead_code))] // used by the 3.12 fork hooks
static PAUSED: crate::process::per_process::PerProcess<std::sync::Mutex<Option<(Listener, Server)>>> =
    crate::process::per_process::PerProcess::new(|| std::sync::Mutex::new(None));

/// Starts the control thread, with every signal blocked. It lives until
/// the process exits (or is paused around a fork, see [`pause_for_fork`]).
pub fn spawn(listener: Listener, handler: Arc<dyn Handler>) -> io::Result<()> {
    let (woken, wake) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(io::Error::from)?;
    let server = Server {
        handler,
        active: Arc::new(AtomicUsize::new(0)),
        connections: Arc::new(std::sync::Mutex::new(Vec::new())),
        wake: Tracked::new(wake),
        woken: Tracked::new(woken),
    };
    start(listener, server)
}

fn start(listener: Listener, server: Server) -> io::Result<()> {
    let (handler, active, connections) = (
        server.handler.clone(),
        server.active.clone(),
        server.connections.clone(),
    );
    let woken = server.woken.socket.as_raw_fd();
    let handle = crate::process::try_spawn_service_thread_returning("pyreload-control", move || {
        serve(&listener, handler, active, connections, woken);
        listener
    })?;
    if let Ok(mut slot) = CONTROL.get().try_lock() {
        *slot = Some(ControlThread { handle, server });
    }
    Ok(())
}

/// In the `before` fork hook (GIL held), on CPython 3.12 (see `host::fork::before` for 3.13): stops
/// this process's control thread if it is idle (no connection being
/// served), so that `os.fork()` in the program sees the threads `python`
/// would have and warns as `python` would. Connections that arrive
/// meanwhile wait in the listen backlog. A thread serving a connection is
/// left running (the fork then warns).
#[cfg_attr(not(all(Py_3_12, not(Py_3_13))), allow(dead_code))] // used by the 3.12 fork hooks
pub fn pause_for_fork() {
    let Ok(mut slot) = CONTROL.get().try_lock() else { return };
    match slot.as_ref() {
        Some(c) if c.server.active.load(Ordering::SeqCst) == 0 => {}
        _ => return,
    }
    let Some(ControlThread { handle, server }) = slot.take() else {
        return;
    };
    // SAFETY: writes one byte from a valid buffer to our own pipe.
    let _ = unsafe { nix::libc::write(server.wake.socket.as_raw_fd(), b"x".as_ptr().cast(), 1) };
    match handle.join() {
        Ok(listener) => {
            // Connection threads that have answered may still be ending;
            // the fork counts them until they are gone. If one is still
            // serving (accepted just before the stop), it is left alone.
            if server.active.load(Ordering::SeqCst) == 0 {
                if let Ok(mut connections) = server.connections.try_lock() {
                    for c in connections.drain(..) {
                        let _ = c.join();
                    }
                }
            }
            if let Ok(mut paused) = PAUSED.get().try_lock() {
                *paused = Some((listener, server));
            }
        }
        Err(_) => crate::process::log("pyreload: the control thread panicked; the program can no longer be updated"),
    }
}

/// In the `after_in_parent` fork hook: starts the control thread that
/// [`pause_for_fork`] stopped, on the same socket.
#[cfg_attr(not(all(Py_3_12, not(Py_3_13))), allow(dead_code))] // used by the 3.12 fork hooks
pub fn resume_after_fork() {
    let Some((listener, server)) = PAUSED.get().try_lock().ok().and_then(|mut p| p.take()) else {
        return;
    };
    if let Err(e) = start(listener, server) {
        crate::process::log(format!(
            "pyreload: could not restart the control thread after a fork (the program can no longer be updated): {e}"
        ));
    }
}

/// The accept loop, until a byte arrives on `woken`.
fn serve(
    listener: &Listener,
    handler: Arc<dyn Handler>,
    active: Arc<AtomicUsize>,
    connections: Arc<std::sync::Mutex<Vec<std::thread::JoinHandle<()>>>>,
    woken: std::os::fd::RawFd,
) {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use std::os::fd::{AsFd, BorrowedFd};
    let request_timeout = request_timeout();
    loop {
        // SAFETY: the pipe's read end outlives this loop (the Server that
        // owns it is kept until the thread is joined).
        let woken_fd = unsafe { BorrowedFd::borrow_raw(woken) };
        let mut fds = [
            PollFd::new(listener.inner.socket.as_fd(), PollFlags::POLLIN),
            PollFd::new(woken_fd, PollFlags::POLLIN),
        ];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => {
                crate::process::log(format!("pyreload: the control thread stopped: poll failed: {e}"));
                return;
            }
        }
        if fds[1].revents().is_some_and(|r| !r.is_empty()) {
            let mut byte = [0u8; 1];
            // SAFETY: reads one byte into a valid buffer from our own pipe.
            let _ = unsafe { nix::libc::read(woken, byte.as_mut_ptr().cast(), 1) };
            return;
        }
        if !fds[0].revents().is_some_and(|r| r.contains(PollFlags::POLLIN)) {
            continue;
        }
        let Ok((stream, _)) = listener.inner.socket.accept() else {
            continue;
        };
        let mut stream = Tracked::new(stream);
        if let Err(reason) = check_peer(&stream.socket) {
            crate::process::log(format!("pyreload: refused a control connection: {reason}"));
            // Say why, without reading anything from a peer we do not trust.
            let _ = stream.socket.set_write_timeout(Some(Duration::from_secs(1)));
            let _ = write_frame(
                &mut stream.socket,
                &Response::Error(
                    Problem::new(format!("refused: {reason}"))
                        .with_help("only the user running the program may control it"),
                ),
            );
            continue;
        }
        if active.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
            active.fetch_sub(1, Ordering::SeqCst);
            let _ = stream.socket.set_write_timeout(Some(Duration::from_secs(1)));
            let _ = write_frame(
                &mut stream.socket,
                &Response::Error(Problem::new("too many control connections; try again")),
            );
            continue;
        }
        let handler = handler.clone();
        let active = active.clone();
        let spawned = std::thread::Builder::new().name("pyreload-conn".into()).spawn(move || {
            handle(stream, handler.as_ref(), request_timeout);
            active.fetch_sub(1, Ordering::SeqCst);
        });
        match spawned {
            Ok(thread) => {
                let mut connections = connections.lock().unwrap_or_else(|p| p.into_inner());
                connections.retain(|c| !c.is_finished());
                connections.push(thread);
            }
            Err(_) => crate::process::log("pyreload: could not start a thread for a control connection"),
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

fn handle(stream: Tracked<UnixStream>, handler: &dyn Handler, request_timeout: Duration) {
    let mut stream = stream;
    let request = read_frame::<Request>(&mut Deadlined::new(&stream.socket, request_timeout));
    let _ = stream.socket.set_read_timeout(None);
    // Held until the answer is written: the exit hook waits for it.
    let mut _owed = None;
    let response = match request {
        Ok(Request::Member {
            protocol,
            spec_path,
            spec_text,
            decision,
            mode,
            born_late,
            hold_ms,
        }) if protocol == PROTOCOL_VERSION => {
            let _owed = state::current().owe_answer();
            return serve_member(
                stream,
                handler,
                Invitation {
                    mode,
                    born_late,
                    spec_path,
                    spec_text,
                    decision: PathBuf::from(decision),
                    hold: Duration::from_millis(hold_ms),
                },
            );
        }
        Ok(request) => {
            _owed = Some(state::current().owe_answer());
            let socket = &stream.socket;
            let gone = || peer_gone(socket);
            respond(request, handler, &gone)
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
    let _ = stream.socket.set_write_timeout(Some(Duration::from_secs(5)));
    let _ = write_frame(&mut stream.socket, &response);
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

fn respond(request: Request, handler: &dyn Handler, client_gone: ClientGone<'_>) -> Response {
    let protocol = request.protocol();
    if protocol != PROTOCOL_VERSION {
        return Response::Error(
            Problem::new(format!(
                "protocol version {protocol} is not supported by this program's pyreload (version {PROTOCOL_VERSION})"
            ))
            .with_help("use the same pyreload binary for `run` and for `apply`"),
        );
    }
    handler.respond(request, client_gone)
}

/// A tree member's side of a [`Request::Member`] conversation: the
/// handler drives its steps, this carries them.
fn serve_member(stream: Tracked<UnixStream>, handler: &dyn Handler, invitation: Invitation) {
    let Ok(watch) = stream.socket.try_clone() else { return };
    let watch = Tracked::new(watch);
    let mut link = StreamLink { stream };
    let gone = move || peer_gone(&watch.socket);
    handler.serve_member(invitation, &mut link, &gone);
}

/// The member's end of its coordinator's connection.
struct StreamLink {
    stream: Tracked<UnixStream>,
}

impl Link for StreamLink {
    fn send(&mut self, reply: &MemberReply) -> io::Result<()> {
        self.stream.socket.set_write_timeout(Some(Duration::from_secs(5)))?;
        write_frame(&mut &self.stream.socket, reply)
    }

    fn notifier(&self) -> Box<dyn Fn(&MemberReply) + Send + Sync> {
        let socket = self.stream.socket.try_clone().ok().map(Tracked::new);
        Box::new(move |reply| {
            if let Some(s) = &socket {
                let _ = write_frame(&mut &s.socket, reply);
            }
        })
    }

    fn recv_or_ring(&mut self, timeout: Duration, ear: &Ear) -> io::Result<Option<Step>> {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        use std::os::fd::AsFd;
        let until = std::time::Instant::now() + timeout;
        loop {
            let left = until.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return Err(io::ErrorKind::TimedOut.into());
            }
            let mut fds = [
                PollFd::new(self.stream.socket.as_fd(), PollFlags::POLLIN),
                PollFd::new(ear.fd(), PollFlags::POLLIN),
            ];
            let ms =
                PollTimeout::try_from(left.as_millis().clamp(1, i32::MAX as u128) as i32).unwrap_or(PollTimeout::MAX);
            match poll(&mut fds, ms) {
                Ok(0) => continue,
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            }
            let ready = |fd: &PollFd<'_>| fd.revents().unwrap_or(PollFlags::empty());
            // A message first: the connection also tells a coordinator gone.
            if !ready(&fds[0]).is_empty() {
                return self.recv(left).map(Some);
            }
            let bell = ready(&fds[1]);
            if bell.contains(PollFlags::POLLIN) {
                return Ok(None);
            }
            if !bell.is_empty() {
                // Hung up without ringing: its coordinator is gone.
                return Err(io::ErrorKind::BrokenPipe.into());
            }
        }
    }

    fn recv(&mut self, timeout: Duration) -> io::Result<Step> {
        read_frame(&mut Deadlined::new(
            &self.stream.socket,
            timeout.max(Duration::from_millis(1)),
        ))
        .map_err(|e| match e {
            FrameError::Io(e) => e,
            other => io::Error::other(other.to_string()),
        })
    }
}
