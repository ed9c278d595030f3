//! What a process of the hosted program does with a control request: the
//! [`Handler`] the control server of the root and of every forked member
//! calls, for the process it runs in ([`state::current`]).
//!
//! It sits above the engine and the control layer and joins them, so
//! neither imports the other: the server knows only the trait, the engine
//! only [`ProcessState`]. The root's `status` also asks the tree's other
//! members about themselves (bounded, in parallel) and lists them.

use std::sync::Arc;

use crate::control::client;
use crate::control::protocol::{Request, Response};
use crate::control::server::Handler;
use crate::diagnostic::Problem;
use crate::engine;
use crate::process::member_wire::{Invitation, Link};
use crate::process::state::{self, ProcessState};
use crate::process::ClientGone;

/// The host's handler: every request is for this process.
pub struct Service;

impl Service {
    /// The handler, as the control server takes it.
    pub fn handler() -> Arc<dyn Handler> {
        Arc::new(Service)
    }
}

impl Handler for Service {
    fn respond(&self, request: Request, client_gone: ClientGone<'_>) -> Response {
        let state = state::current();
        match request {
            Request::Status { .. } => Response::Status(status(state)),
            Request::MemberStatus { .. } => Response::Member(state.member_info()),
            Request::Progress { .. } => Response::Progress {
                progress: crate::tree::progress(),
            },
            Request::Collect { .. } => match engine::collect_garbage(state) {
                Ok(()) => Response::Status(status(state)),
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
            Request::Member { .. } => Response::Error(Problem::new(
                "a member conversation is served on its own connection; nothing was changed",
            )),
            Request::Prepare {
                spec_path,
                spec_text,
                lease_ms,
                ..
            } => prepare(state, &spec_path, &spec_text, lease_ms),
            Request::Commit { id, .. } => answered(engine::prepared::commit_id(state, &id)),
            Request::Abort { id, .. } => answered(engine::prepared::abort_id(state, &id)),
            Request::Rollback {
                dry_run, timeout_ms, ..
            } => reported(
                crate::tree::rollback(
                    state,
                    dry_run,
                    std::time::Duration::from_millis(timeout_ms),
                    Some(client_gone),
                ),
                dry_run,
            ),
        }
    }

    fn serve_member(&self, invitation: Invitation, link: &mut dyn Link, coordinator_gone: ClientGone<'_>) {
        engine::member::serve(state::current(), invitation, link, coordinator_gone);
    }
}

/// `pyreload prepare`: a program alone holds the update itself; the root
/// of a tree holds it across every member. A member asked directly is
/// refused: preparing it alone would leave the others on the old version.
fn prepare(state: &'static ProcessState, spec_path: &str, spec_text: &str, lease_ms: u64) -> Response {
    if !state.identity.is_root() {
        return Response::Error(
            Problem::new(format!(
                "pid {} is a worker process of the program whose root is pid {}; preparing it alone would leave the \
                 others on the old version, so nothing was changed",
                state.pid, state.identity.root_pid
            ))
            .with_help(format!(
                "prepare the whole tree: `pyreload prepare --pid {} SPEC`",
                state.identity.root_pid
            )),
        );
    }
    let lease = std::time::Duration::from_millis(lease_ms);
    let tree = crate::tree::has_members(state) || crate::process::tree::has_had_members(&state.identity.tree_dir());
    let prepared = if tree {
        crate::tree::prepared::prepare(state, spec_path, spec_text, lease)
    } else {
        engine::prepared::prepare(state, spec_path, spec_text, lease)
    };
    match prepared {
        Ok(engine::prepared::Prepared::Held(prepared, report)) => Response::Prepared { prepared, report },
        Ok(engine::prepared::Prepared::Refused(report)) => {
            crate::process::log(format!("pyreload: prepare: {}", report.one_line()));
            Response::Report(report)
        }
        Err(problem) => Response::Error(problem),
    }
}

/// The answer to `commit` or `abort`.
fn answered(result: Result<engine::prepared::Answer, Problem>) -> Response {
    match result {
        Ok(engine::prepared::Answer::Report(report)) => Response::Report(report),
        Ok(engine::prepared::Answer::Fate(fate)) => Response::Fate(fate),
        Err(problem) => Response::Error(problem),
    }
}

/// This process's status; the root's lists the tree's live members.
fn status(state: &ProcessState) -> crate::control::protocol::ProgramInfo {
    let mut info = engine::status(state);
    if state.identity.is_root() {
        info.members = client::member_status(&state.identity.tree_dir(), state.pid, client::MEMBER_TIMEOUT);
    }
    info
}

/// Answers with the report, logging an update that changed (or tried to
/// change) the program on its stderr.
fn reported(result: Result<crate::report::Report, Problem>, dry_run: bool) -> Response {
    match result {
        Ok(report) => {
            if !dry_run {
                crate::process::log(format!("pyreload: {}", report.one_line()));
            }
            Response::Report(Box::new(report))
        }
        Err(problem) => Response::Error(problem),
    }
}
