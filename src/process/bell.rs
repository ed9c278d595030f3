//! One-to-many wake-ups for a tree's members: the coordinator rings once,
//! and every member waiting for that step wakes at once.
//!
//! Sending each member its commit in turn spreads the commits out on a
//! busy machine: every send wakes a member that takes the CPU from the
//! coordinator before it can send the next (with nine members, the last
//! heard its step 2 ms after the first, measured on 2 cores), and the
//! spread of the commits is the time the tree runs mixed versions. A bell is a named FIFO in the tree directory. The
//! coordinator holds it open for reading and writing (so it never blocks
//! and never sees "no reader"); members open it for reading and `poll` it
//! beside their connection. One byte written makes it readable for every
//! member, for good: nobody reads the byte, so each bell rings once, and
//! an update has one per step it broadcasts.
//!
//! Both ends are close-on-exec and registered as control fds
//! ([`super::fds`]), so a worker forked meanwhile holds neither.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use super::fds::Tracked;

/// The coordinator's end: rings once.
pub struct Bell {
    path: PathBuf,
    fifo: Tracked<File>,
}

impl Bell {
    /// Makes the FIFO at `path` (replacing a stale one) and opens it.
    pub fn create(path: PathBuf) -> io::Result<Bell> {
        let _ = std::fs::remove_file(&path);
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600)).map_err(io::Error::from)?;
        // Read and write: opening never waits for a reader, and a write
        // never fails for want of one.
        let fifo = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc_flags())
            .open(&path)?;
        Ok(Bell {
            path,
            fifo: Tracked::new(fifo),
        })
    }

    /// Wakes every member listening, now and later.
    pub fn ring(&self) -> io::Result<()> {
        (&self.fifo.socket).write_all(&[1])
    }

    #[cfg(test)]
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Bell {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// A member's end: readable once the bell has rung.
pub struct Ear {
    fifo: Tracked<File>,
}

impl Ear {
    /// Opens the bell at `path` for listening; never waits.
    pub fn open(path: &Path) -> io::Result<Ear> {
        let fifo = OpenOptions::new().read(true).custom_flags(libc_flags()).open(path)?;
        Ok(Ear {
            fifo: Tracked::new(fifo),
        })
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fifo.socket.as_fd()
    }
}

fn libc_flags() -> i32 {
    (nix::fcntl::OFlag::O_NONBLOCK | nix::fcntl::OFlag::O_CLOEXEC).bits()
}

/// The step every staged member commits at.
pub const COMMIT: &str = "commit";
/// `[tree] commit = "together"`: every member stopped with its merge lets
/// go. Rung only once the tree decided to commit (an abort is a message to
/// each), so hearing it is the decision.
pub const RELEASE: &str = "release";

/// The bell for one step of one update, next to its decision file.
pub fn path_for(decision: &Path, step: &str) -> PathBuf {
    let name = decision
        .file_name()
        .map(|n| n.to_string_lossy().replacen("decision-", "bell-", 1))
        .unwrap_or_else(|| "bell".into());
    decision.with_file_name(format!("{name}-{step}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

    fn rung(ear: &Ear) -> bool {
        let mut fds = [PollFd::new(ear.fd(), PollFlags::POLLIN)];
        poll(&mut fds, PollTimeout::ZERO).unwrap() == 1
    }

    #[test]
    fn one_ring_wakes_every_ear_for_good() {
        let dir = tempfile::tempdir().unwrap();
        let bell = Bell::create(dir.path().join("bell-1-commit")).unwrap();
        let ears: Vec<Ear> = (0..3).map(|_| Ear::open(bell.path()).unwrap()).collect();
        assert!(ears.iter().all(|e| !rung(e)));
        bell.ring().unwrap();
        assert!(ears.iter().all(rung));
        // Still rung for an ear opened later, and after a second look.
        assert!(rung(&Ear::open(bell.path()).unwrap()));
        assert!(ears.iter().all(rung));
        let path = bell.path().to_path_buf();
        drop(bell);
        assert!(!path.exists());
    }

    #[test]
    fn the_bell_sits_beside_its_decision() {
        assert_eq!(
            path_for(Path::new("/run/tree-1/decision-1-22"), COMMIT),
            Path::new("/run/tree-1/bell-1-22-commit")
        );
    }
}
