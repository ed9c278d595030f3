//! The control sockets this process has open: the listener, accepted
//! connections, and connections it made to other members.
//!
//! A forked child inherits them all (Rust's sockets are close-on-exec, not
//! close-on-fork). Nobody in the child accepts on the inherited listener,
//! and an inherited connection keeps its peer from ever seeing EOF, so the
//! child closes every one of them first thing ([`close_inherited`]).
//!
//! The registry is a fixed array of atomics, so registering takes no lock
//! and closing in the child needs none. An fd is registered just after it
//! is opened and unregistered just before it is closed: a fork between
//! those and the open or close leaves that one fd open in the child (it
//! cannot close the wrong fd). With more than [`SLOTS`] open at once, the
//! rest are not registered.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicI32, Ordering};

/// At most this many control fds are tracked at once.
pub const SLOTS: usize = 256;

static OPEN: [AtomicI32; SLOTS] = [const { AtomicI32::new(-1) }; SLOTS];

/// Keeps an fd registered until dropped; drop it before the fd closes
/// (declare it after the socket, or hold it inside [`Tracked`]).
pub struct Registration {
    slot: Option<usize>,
}

/// Registers `fd` as a control socket of this process.
pub fn register(fd: RawFd) -> Registration {
    let slot = OPEN
        .iter()
        .position(|s| s.compare_exchange(-1, fd, Ordering::AcqRel, Ordering::Relaxed).is_ok());
    Registration { slot }
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Some(slot) = self.slot {
            OPEN[slot].store(-1, Ordering::Release);
        }
    }
}

/// A socket registered for as long as it lives: dropping it unregisters,
/// then closes.
pub struct Tracked<S: AsRawFd> {
    // Field order is drop order: the registration goes first.
    _registration: Registration,
    pub socket: S,
}

impl<S: AsRawFd> Tracked<S> {
    pub fn new(socket: S) -> Self {
        Tracked {
            _registration: register(socket.as_raw_fd()),
            socket,
        }
    }
}

/// In a freshly forked child (one thread): closes every control fd
/// inherited from the parent. Plain `close(2)` calls.
pub fn close_inherited() {
    for slot in &OPEN {
        let fd = slot.swap(-1, Ordering::AcqRel);
        if fd >= 0 {
            // SAFETY: the fd was registered as one of ours and is closed
            // once; the Rust value owning it in the parent's memory is
            // never dropped in the child (its thread does not exist here).
            unsafe {
                nix::libc::close(fd);
            }
        }
    }
}
