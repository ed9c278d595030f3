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
