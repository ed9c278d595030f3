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
    /// From a tree's coordinator: take part in a tree-wide update. The
    /// connection then carries the conversation of
    /// [`super::member_wire`]; `decision` is the file that decides a
    /// merge once the coordinator is silent.
    Member {
        protocol: u32,
        spec_path: String,
        spec_text: String,
        decision: String,
    },
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
    /// The request could not be served at all (busy, malformed, wrong
    /// protocol version). Update failures are reports, not errors.
    Error(Problem),
}

/// What `pyreload status` shows about a program.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProgramInfo {
    pub name: String,
    pub pid: u32,
    pub version: Option<String>,
    /// Seconds since the Unix epoch.
    pub started_at: f64,
    pub uptime_s: f64,
    pub socket: String,
    pub history: Vec<HistoryEntry>,
    /// Committed updates `pyreload rollback` would undo, newest first.
    #[serde(default)]
    pub rollback: Vec<RollbackInfo>,
    /// The update (or rollback) running now, if any.
    #[serde(default)]
    pub in_progress: Option<InProgress>,
    /// Objects of earlier versions that are still alive (see
    /// `engine::retained`).
    #[serde(default)]
    pub retained: Retained,
}

/// An update the host is working on, and how far it has got.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InProgress {
    pub update: String,
    pub phase: Phase,
    /// Seconds since the Unix epoch.
    pub started_at: f64,
    /// When the current phase began, in seconds since the Unix epoch.
    pub phase_started_at: f64,
}

/// The phases of an update, in order. Before `commit` an update can still
/// be cancelled with nothing changed; from `commit` on it runs to its end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Reading and compiling sources, resolving names.
    Prepare,
    /// Waiting for the safe point.
    Wait,
    /// Running the new module bodies into staging modules.
    Stage,
    /// In the stopped world: merge, transforms, `[check] after`, or the
    /// undo of a rollback.
    Commit,
    /// After the pause: a lazy migration converting the rest.
    Sweep,
}

impl Phase {
    pub fn name(self) -> &'static str {
        match self {
            Phase::Prepare => "prepare",
            Phase::Wait => "wait",
            Phase::Stage => "stage",
            Phase::Commit => "commit",
            Phase::Sweep => "sweep",
        }
    }
}

/// How many objects from earlier versions are still alive: staging modules
/// and the new versions of classes, whose contents the commit merged into
/// the live ones. Each should be freed by the garbage collector soon after
/// its update; one that lives on is kept by a reference from somewhere.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Retained {
    pub modules: usize,
    pub classes: usize,
    /// How many were tracked since the program started.
    pub tracked: usize,
    /// `update: kind name` of each still alive, oldest first (at most 20).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub alive: Vec<String>,
}

/// A module's source as it runs now and as the spec would load it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModuleSources {
    pub module: String,
    /// (path, text); None for a module new in this update, or one whose
    /// running source is not known (then `unknown` says why).
    pub running: Option<(String, String)>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unknown: Option<String>,
    pub new_path: String,
    pub new_text: String,
}

/// The program's loaded modules, for drafting a spec from what changed on
/// disk.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LoadedProgram {
    /// The program's `sys.path`, absolute.
    pub sys_path: Vec<String>,
    pub modules: Vec<LoadedModule>,
}

/// A loaded module with a source file, or a package.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LoadedModule {
    pub name: String,
    /// Its source file, absolute, if it has one.
    pub path: Option<String>,
    /// Where its submodules are found, if it is a package.
    pub search: Option<Vec<String>>,
    pub state: FileState,
}

/// A module's file on disk against the source the module runs.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum FileState {
    /// The file holds what runs (or the module has no file).
    Same,
    /// The file changed since it was loaded; `running` is what runs.
    Changed { running: String },
    /// The file is gone.
    Gone,
    /// A frozen module: the interpreter runs code built into it, not its
    /// file.
    Frozen,
    /// What runs is not known.
    Unknown { why: String },
}

/// One committed update on the rollback stack.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RollbackInfo {
    pub name: String,
    pub from: Option<String>,
    pub to: String,
    /// Why it cannot be rolled back, if it cannot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blocked: Option<String>,
}

/// One update attempt, as remembered by the host.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HistoryEntry {
    pub name: String,
    pub from: Option<String>,
    pub to: String,
    /// Seconds since the Unix epoch.
    pub at: f64,
    pub outcome: crate::report::Outcome,
    pub pause_ms: f64,
    pub total_ms: f64,
    /// Time in each phase.
    #[serde(default)]
    pub timings: crate::report::Timings,
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
