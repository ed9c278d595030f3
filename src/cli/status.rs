//! `pyreload status`: who is running, at which version, and what updates it
//! has seen.

use std::fmt::Write as _;

use clap::Args;

use super::{error, TargetArgs, EXIT_OK, EXIT_USAGE};
use crate::control::client;
use crate::control::protocol::ProgramInfo;
use crate::report::Outcome;

/// Show a running program's version and update history
#[derive(Args, Debug)]
#[command(after_help = "Examples:\n  \
    pyreload status\n  \
    pyreload status --pid 4242 --json")]
pub struct StatusArgs {
    #[command(flatten)]
    target: TargetArgs,
    /// Only the program with this name (when several are running)
    #[arg(long, value_name = "NAME")]
    name: Option<String>,
    /// Print the status as JSON on stdout
    #[arg(long)]
    json: bool,
}

pub fn status(args: StatusArgs) -> i32 {
    match client::find(&args.target.selector(args.name.clone())) {
        Ok(found) => {
            if args.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&found.info).expect("status serializes")
                );
            } else {
                print!("{}", to_text(&found.info));
            }
            EXIT_OK
        }
        Err(e) => {
            error(e);
            EXIT_USAGE
        }
    }
}

fn to_text(info: &ProgramInfo) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{} (pid {})", info.name, info.pid);
    let _ = writeln!(out, "  version: {}", info.version.as_deref().unwrap_or("(none)"));
    let _ = writeln!(out, "  uptime:  {:.1} s", info.uptime_s);
    let _ = writeln!(out, "  socket:  {}", info.socket);
    match info.rollback.first() {
        None => {
            let _ = writeln!(out, "  rollback: nothing to roll back");
        }
        Some(last) => {
            let what = format!(
                "`{}` ({} -> {})",
                last.name,
                last.to,
                last.from.as_deref().unwrap_or("(none)")
            );
            let _ = match &last.blocked {
                None => writeln!(
                    out,
                    "  rollback: `pyreload rollback` undoes {what}; {} update(s) can be undone in turn",
                    info.rollback.len()
                ),
                Some(why) => writeln!(out, "  rollback: {what} cannot be rolled back: {why}"),
            };
        }
    }
    if info.history.is_empty() {
        let _ = writeln!(out, "  history: no updates yet");
        return out;
    }
    let _ = writeln!(out, "  history:");
    for (i, h) in info.history.iter().enumerate() {
        let outcome = match h.outcome {
            Outcome::Committed => "applied",
            Outcome::Refused => "refused",
            Outcome::RolledBack => "rolled back",
            Outcome::Checked => "checked",
        };
        let t = &h.timings;
        let _ = writeln!(
            out,
            "    {:>3}. {}  {} -> {}  {}  at +{:.1} s  pause {:.2} ms  total {:.1} ms (prepare {:.1}, wait {:.1}, stage {:.1}, commit {:.1}, check {:.1})",
            i + 1,
            h.name,
            h.from.as_deref().unwrap_or("(none)"),
            h.to,
            outcome,
            (h.at - info.started_at).max(0.0),
            h.pause_ms,
            h.total_ms,
            t.prepare_ms,
            t.wait_ms,
            t.stage_ms,
            t.commit_ms,
            t.check_ms
        );
    }
    out
}
