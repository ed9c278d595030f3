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
    With several programs running, status lists them all (one line each, then each in detail); \
    --name or --pid narrows it to one. --json prints one object for one program, and an array \
    when several match.\n\n\
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
    // Without --pid or --socket, every program that answers (or every one
    // with --name), like `docker ps`: several running is no reason to refuse.
    let found = if args.target.pid.is_none() && args.target.socket.is_none() {
        client::find_all(args.name.as_deref()).map_err(|e| e.problem())
    } else {
        client::find(&args.target.selector(args.name.clone()))
            .map(|t| vec![t])
            .map_err(|e| e.problem())
    };
    let mut found = match found {
        Ok(found) => found,
        Err(problem) => {
            eprint!("{}", problem.render(None));
            return EXIT_USAGE;
        }
    };
    if args.collect {
        for target in &mut found {
            match collect(target) {
                Ok(info) => target.info = info,
                Err(code) => return code,
            }
        }
    }
    let infos: Vec<&ProgramInfo> = found.iter().map(|t| &t.info).collect();
    match (args.json, infos.as_slice()) {
        (true, [one]) => println!("{}", serde_json::to_string_pretty(one).expect("status serializes")),
        (true, many) => println!("{}", serde_json::to_string_pretty(many).expect("status serializes")),
        (false, [one]) => print!("{}", to_text(one)),
        (false, many) => {
            print!("{}", summary(many));
            for info in many {
                println!();
                print!("{}", to_text(info));
            }
        }
    }
    EXIT_OK
}

/// `--collect` for one program: its status after a full collection.
fn collect(target: &client::Target) -> Result<ProgramInfo, i32> {
    let request = Request::Collect {
        protocol: PROTOCOL_VERSION,
    };
    match client::exchange(&target.socket, &request, Some(Duration::from_secs(120))) {
        Ok(Response::Status(info)) => Ok(info),
        Ok(Response::Error(problem)) => {
            eprint!("{}", problem.render(None));
            Err(EXIT_REFUSED)
        }
        Ok(_) => {
            error("the program answered with something other than its status");
            Err(EXIT_REFUSED)
        }
        Err(e) => {
            super::apply::lost_contact(target, &e);
            Err(EXIT_REFUSED)
        }
    }
}

/// One line per program, as `docker ps` does, before the details.
fn summary(infos: &[&ProgramInfo]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{} programs running under `pyreload run`:", infos.len());
    let _ = writeln!(
        out,
        "  {:>8}  {:<20}  {:<12}  {:>10}  UPDATES",
        "PID", "NAME", "VERSION", "UPTIME"
    );
    for info in infos {
        let applied = info
            .history
            .iter()
            .filter(|h| h.outcome == crate::report::Outcome::Committed)
            .count();
        let _ = writeln!(
            out,
            "  {:>8}  {:<20}  {:<12}  {:>9.1}s  {applied} applied{}",
            info.pid,
            info.name,
            info.version.as_deref().unwrap_or("(none)"),
            info.uptime_s,
            if info.in_progress.is_some() {
                ", one in progress"
            } else {
                ""
            }
        );
    }
    out
}

fn to_text(info: &ProgramInfo) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{} (pid {})", info.name, info.pid);
    let _ = writeln!(out, "  version: {}", info.version.as_deref().unwrap_or("(none)"));
    let _ = writeln!(out, "  uptime:  {:.1} s", info.uptime_s);
    let _ = writeln!(out, "  socket:  {}", info.socket);
    if info.exiting {
        let _ = writeln!(
            out,
            "  exiting: it has begun to exit; it finishes an update in progress and takes no new one"
        );
    }
    if info.root_pid != 0 && info.root_pid != info.pid {
        let _ = writeln!(
            out,
            "  member:  of the program tree of pid {} (forked from pid {})",
            info.root_pid, info.ppid
        );
    }
    if !info.members.is_empty() {
        let _ = writeln!(out, "  members: {} forked process(es) in its tree:", info.members.len());
        for m in &info.members {
            let mut state = match (&m.unreachable, &m.in_progress) {
                (Some(why), _) => format!("  (did not answer: {why})"),
                (None, Some(p)) => format!("  updating `{}` ({})", p.update, p.phase.name()),
                (None, None) => String::new(),
            };
            if m.exiting {
                state.push_str("  (exiting)");
            }
            let _ = writeln!(
                out,
                "    pid {:>7}  ppid {:>7}  version {:<10}  {}{state}",
                m.pid,
                m.ppid,
                m.version.as_deref().unwrap_or("(none)"),
                m.role
            );
        }
    }
    if let Some(p) = &info.prepared {
        let _ = writeln!(
            out,
            "  prepared: `{}` ({}), spec {}; {:.1} s left on its lease (`pyreload commit {}` or `abort`)",
            p.update, p.id, p.spec, p.lease_left_s, p.id
        );
    }
    if let Some(p) = info.in_progress.as_ref().filter(|_| info.prepared.is_none()) {
        let now = crate::process::state::unix_seconds(std::time::SystemTime::now());
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
