//! `pyreload status`: who is running, at which version, and what updates it
//! has seen.

use std::fmt::Write as _;

use clap::Args;

use std::time::Duration;

use super::{error, TargetArgs, EXIT_OK, EXIT_REFUSED, EXIT_USAGE};
use crate::control::client;
use crate::control::protocol::{ProgramInfo, Request, Response, PROTOCOL_VERSION};

/// Show a running program's version and update history
#[derive(Args, Debug)]
#[command(after_help = "Examples:\n  \
    pyreload status\n  \
    pyreload status --pid 4242 --json\n  \
    pyreload status --collect\n\n\
    `retained` counts objects of earlier versions (staging modules, the staged copies of \
    classes) that are still alive. They should be freed at the program's next garbage \
    collection; --collect runs one first (a pause as long as a full gc.collect() in the \
    program), so that what it still lists is really kept alive by some reference.")]
pub struct StatusArgs {
    #[command(flatten)]
    target: TargetArgs,
    /// Only the program with this name (when several are running)
    #[arg(long, value_name = "NAME")]
    name: Option<String>,
    /// Print the status as JSON on stdout
    #[arg(long)]
    json: bool,
    /// Run a full garbage collection in the program first, then report
    #[arg(long)]
    collect: bool,
}

pub fn status(args: StatusArgs) -> i32 {
    match client::find(&args.target.selector(args.name.clone())) {
        Ok(mut found) => {
            if args.collect {
                let request = Request::Collect {
                    protocol: PROTOCOL_VERSION,
                };
                match client::exchange(&found.socket, &request, Some(Duration::from_secs(120))) {
                    Ok(Response::Status(info)) => found.info = info,
                    Ok(Response::Error(problem)) => {
                        eprint!("{}", problem.render(None));
                        return EXIT_REFUSED;
                    }
                    Ok(_) => {
                        error("the program answered with something other than its status");
                        return EXIT_REFUSED;
                    }
                    Err(e) => {
                        super::apply::lost_contact(&found, &e);
                        return EXIT_REFUSED;
                    }
                }
            }
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
    if let Some(p) = &info.in_progress {
        let now = crate::host::state::unix_seconds(std::time::SystemTime::now());
        let _ = writeln!(
            out,
            "  updating: `{}`, in {} for {:.1} s ({:.1} s in all)",
            p.update,
            p.phase.name(),
            (now - p.phase_started_at).max(0.0),
            (now - p.started_at).max(0.0)
        );
    }
    let r = &info.retained;
    if r.modules + r.classes > 0 {
        let _ = writeln!(
            out,
            "  retained: {} module(s) and {} class(es) of earlier versions still alive (of {} tracked){}",
            r.modules,
            r.classes,
            r.tracked,
            if r.alive.is_empty() { "" } else { ":" }
        );
        for label in &r.alive {
            let _ = writeln!(out, "    {label}");
        }
    }
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
        let outcome = h.outcome.verb();
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
