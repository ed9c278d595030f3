//! `pyreload rollback`: undo the last committed update.

use std::time::Duration;

use clap::Args;

use super::apply::{lost_contact, print_response};
use super::{TargetArgs, EXIT_REFUSED};
use crate::control::client::exchange;
use crate::control::protocol::{Request, PROTOCOL_VERSION};

/// Undo the last committed update of a running program
#[derive(Args, Debug)]
#[command(after_help = "Examples:\n  \
    pyreload rollback\n  \
    pyreload rollback --pid 4242 --check\n\n\
    Code comes back from the version the program ran before the update; data comes back through \
    the `reverse` transformers the update's spec declared. Run it again to go further back. An \
    update that transformed data without a `reverse` cannot be rolled back. `pyreload status` \
    shows what can be. Exit status: 0 rolled back, 1 refused (nothing changed), 2 no program.")]
pub struct RollbackArgs {
    #[command(flatten)]
    target: TargetArgs,
    /// Only the program with this name (when several are running)
    #[arg(long, value_name = "NAME")]
    name: Option<String>,
    /// Only say whether the rollback is possible; change nothing
    #[arg(long)]
    check: bool,
    /// Give up, changing nothing, if the safe point is not reached in this time
    #[arg(long, value_name = "MS", default_value_t = 5000)]
    timeout_ms: u64,
    /// Print the report as JSON on stdout
    #[arg(long)]
    json: bool,
}

pub fn rollback(args: RollbackArgs) -> i32 {
    let found = match super::find_program(&args.target, args.name.clone(), None) {
        Ok(found) => found,
        Err(code) => return code,
    };
    let request = Request::Rollback {
        protocol: PROTOCOL_VERSION,
        dry_run: args.check,
        timeout_ms: args.timeout_ms,
    };
    let timeout = Duration::from_millis(args.timeout_ms) + Duration::from_secs(120);
    match exchange(&found.socket, &request, Some(timeout)) {
        Ok(response) => print_response(response, args.json, None),
        Err(e) => {
            lost_contact(&found, &e);
            EXIT_REFUSED
        }
    }
}
