//! Messages on the control socket and how they are framed.
//!
//! A frame is a 4-byte big-endian length followed by that many bytes of
//! JSON. The length is checked against [`MAX_FRAME`] before anything is
//! allocated, so a hostile or broken peer cannot make the program reserve
//! memory it does not have.

use std::io::{self, Read, Write};

use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::diagnostic::Problem;
use crate::report::Report;

// The status facts are defined in the bottom layer, which stores them
// (see `process::wire`); these are the ones the requests and responses
// name.
pub use crate::process::wire::{
    FileState, LoadedProgram, MemberInfo, ModuleSources, PreparedFate, PreparedInfo, ProgramInfo,
};

/// Bumped when a message changes shape; a client and host that disagree
/// say so instead of misreading each other.
pub const PROTOCOL_VERSION: u32 = 1;

/// Largest frame either side accepts. A spec and its report fit many times.
pub const MAX_FRAME: usize = 8 * 1024 * 1024;

/// What a client asks of a hosted program.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Who are you? Used for discovery and by `status`.
    Status { protocol: u32 },
    /// Validate (and unless `dry_run`, apply) the spec whose TOML text is
    /// given. The host re-parses it so that its errors carry spans into the
    /// same text the client shows.
    Apply {
        protocol: u32,
        spec_path: String,
        spec_text: String,
        dry_run: bool,
    },
    /// The running and new source of each module the spec updates.
    Sources {
        protocol: u32,
        spec_path: String,
        spec_text: String,
    },
    /// Every loaded module, compared with its file on disk (for `pyreload
    /// new --running`).
    Loaded { protocol: u32 },
    /// Undo the last committed update (with `dry_run`, only say whether it
    /// could be).
    Rollback {
        protocol: u32,
        dry_run: bool,
        timeout_ms: u64,
    },
    /// Run a full garbage collection, then answer as `Status`: what
    /// `retained` lists then is really kept alive.
    Collect { protocol: u32 },
    /// What one member of a process tree says about itself, for the
    /// root's `status`: answered with [`Response::Member`], and never
    /// fanned out further (unlike `Status` in the root).
    MemberStatus { protocol: u32 },
    /// How far the tree-wide update running now has got (cheap: asks no
    /// member), for the progress `pyreload apply` shows.
    Progress { protocol: u32 },
    /// From a tree's coordinator: take part in a tree-wide update. The
    /// connection then carries the conversation of
    /// [`super::member_wire`]; `decision` is the file that decides a
    /// merge once the coordinator is silent; `mode` what it is for (an
    /// update by default).
    Member {
        protocol: u32,
        spec_path: String,
        spec_text: String,
        decision: String,
        #[serde(default)]
        mode: crate::process::member_wire::Mode,
        /// Found after its parent committed (see `Invitation::born_late`).
        #[serde(default)]
        born_late: bool,
        /// For a prepared update (`pyreload prepare` on a tree): how long
        /// the coordinator may hold the staged members before it commits.
        /// 0 for `apply`.
        #[serde(default)]
        hold_ms: u64,
    },
    /// Do everything `Apply` does up to the commit and hold the update
    /// prepared for `lease_ms` (see `engine::prepared`).
    Prepare {
        protocol: u32,
        spec_path: String,
        spec_text: String,
        lease_ms: u64,
    },
    /// Commit the prepared update `id`.
    Commit { protocol: u32, id: String },
    /// Drop the prepared update `id`, changing nothing.
    Abort { protocol: u32, id: String },
}

impl Request {
    /// The protocol version the client speaks.
    pub fn protocol(&self) -> u32 {
        match self {
            Request::Status { protocol }
            | Request::Collect { protocol }
            | Request::MemberStatus { protocol }
            | Request::Progress { protocol }
            | Request::Apply { protocol, .. }
            | Request::Sources { protocol, .. }
            | Request::Loaded { protocol }
            | Request::Rollback { protocol, .. }
            | Request::Member { protocol, .. }
            | Request::Prepare { protocol, .. }
            | Request::Commit { protocol, .. }
            | Request::Abort { protocol, .. } => *protocol,
        }
    }
}

/// The host's answer to a [`Request`].
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Response {
    Status(ProgramInfo),
    Report(Box<Report>),
    Sources {
        modules: Vec<ModuleSources>,
    },
    Loaded(LoadedProgram),
    Member(MemberInfo),
    /// The answer to `Progress`: None when no tree-wide update runs.
    Progress {
        progress: Option<crate::process::wire::TreeProgress>,
    },
    /// The answer to `Prepare` when the update is prepared: its id and
    /// lease, and the report so far (prepare, wait and stage timings, and
    /// what would block the safe point now, as warnings).
    Prepared {
        prepared: PreparedInfo,
        report: Box<Report>,
    },
    /// The answer to `Abort` (and to a `Commit` of an update already
    /// over that has no report): what became of it.
    Fate(PreparedFate),
    /// The request could not be served at all (busy, malformed, wrong
    /// protocol version). Update failures are reports, not errors.
    Error(Problem),
}

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("connection closed")]
    Closed,
    #[error("message of {0} bytes is larger than the limit of {MAX_FRAME} bytes")]
    TooLarge(usize),
    #[error("malformed message: {0}")]
    Malformed(#[from] serde_json::Error),
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// Writes one message as a frame.
pub fn write_frame<T: Serialize>(w: &mut impl Write, message: &T) -> io::Result<()> {
    let body = serde_json::to_vec(message).map_err(io::Error::other)?;
    if body.len() > MAX_FRAME {
        return Err(io::Error::other(FrameError::TooLarge(body.len())));
    }
    w.write_all(&(body.len() as u32).to_be_bytes())?;
    w.write_all(&body)?;
    w.flush()
}

/// Reads one frame and decodes it as `T`.
pub fn read_frame<T: DeserializeOwned>(r: &mut impl Read) -> Result<T, FrameError> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Err(FrameError::Closed),
        Err(e) => return Err(e.into()),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(FrameError::TooLarge(len));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body)?;
    Ok(serde_json::from_slice(&body)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip() {
        let mut buf = Vec::new();
        write_frame(
            &mut buf,
            &Request::Status {
                protocol: PROTOCOL_VERSION,
            },
        )
        .unwrap();
        let back: Request = read_frame(&mut buf.as_slice()).unwrap();
        assert!(matches!(
            back,
            Request::Status {
                protocol: PROTOCOL_VERSION
            }
        ));
    }

    #[test]
    fn oversized_length_is_refused_before_allocating() {
        let mut buf = (u32::MAX).to_be_bytes().to_vec();
        buf.extend_from_slice(b"{}");
        let err = read_frame::<Request>(&mut buf.as_slice()).unwrap_err();
        assert!(matches!(err, FrameError::TooLarge(n) if n == u32::MAX as usize));
    }

    #[test]
    fn truncated_and_garbage_frames_are_errors() {
        let mut truncated = 10u32.to_be_bytes().to_vec();
        truncated.extend_from_slice(b"{\"ty");
        assert!(matches!(
            read_frame::<Request>(&mut truncated.as_slice()),
            Err(FrameError::Io(_))
        ));
        let mut garbage = 3u32.to_be_bytes().to_vec();
        garbage.extend_from_slice(b"abc");
        assert!(matches!(
            read_frame::<Request>(&mut garbage.as_slice()),
            Err(FrameError::Malformed(_))
        ));
        assert!(matches!(
            read_frame::<Request>(&mut [].as_slice()),
            Err(FrameError::Closed)
        ));
    }
}
