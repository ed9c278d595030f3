//! `pyreload prepare`, `pyreload commit` and `pyreload abort`: the two
//! phases of an update that an orchestrator makes atomic across hosts
//! (see `engine::prepared` and docs/many-hosts.md).
//!
//! `prepare` parses the spec here first, as `apply` does, so a malformed
//! spec never reaches the program. `commit` and `abort` find the program
//! from the pid in the id, so they need nothing but the id.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use super::apply::{lost_contact, print_response};
use super::{TargetArgs, EXIT_OK, EXIT_REFUSED};
use crate::control::client::{self, exchange, Selector};
use crate::control::protocol::{PreparedFate, PreparedInfo, Request, Response, PROTOCOL_VERSION};
use crate::diagnostic::Problem;
use crate::engine::prepared::{clock, describe, parse_id};
use crate::report::Outcome;

/// Run an update up to its commit and hold it prepared, for `pyreload commit`
#[derive(Args, Debug)]
#[command(after_help = "Examples:\n  \
    pyreload prepare specs/v1-to-v2.toml\n  \
    pyreload prepare --lease 5m --json specs/v1-to-v2.toml\n  \
    pyreload commit 4242-63f1a2b3c4d5e-1\n\n\
    Does everything `apply` does up to the commit: resolves the spec, waits for the safe point, \
    runs the new module bodies into staging modules, and says what would block the commit now. \
    The program goes on serving the old version. It prints the update's id; `pyreload commit ID` \
    commits it and `pyreload abort ID` drops it. If neither comes before the lease ends, the \
    update aborts by itself, with nothing changed, and the program logs it. While it is prepared, \
    other applies are refused (busy), and `pyreload status` shows it. \
    Exit status: 0 prepared, 1 refused (nothing changed), 2 bad spec or no program.")]
pub struct PrepareArgs {
    /// The update spec (TOML)
    spec: PathBuf,
    #[command(flatten)]
    target: TargetArgs,
    /// How long the update stays prepared without a commit: 60s, 500ms, 5m, 1h
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_lease)]
    lease: Duration,
    /// Print the id, the lease and the report as JSON on stdout
    #[arg(long)]
    json: bool,
}

/// Commit an update that `pyreload prepare` left prepared
#[derive(Args, Debug)]
#[command(after_help = "Examples:\n  \
    pyreload commit 4242-63f1a2b3c4d5e-1\n  \
    pyreload commit --json 4242-63f1a2b3c4d5e-1\n  \
    pyreload commit --at \"$(date -d '+2 seconds' +%s.%N)\" 4242-63f1a2b3c4d5e-1\n\n\
    Waits for the safe point again (the program ran on while the update was prepared) and \
    commits, with the same guarantees and the same report as `apply`: the whole update takes \
    effect, or it is refused or rolled back and the program runs the old version. Asked again, \
    it answers with the same report. An id that was aborted, whose lease ended, that belongs to \
    another program, or from before the program restarted, is refused with the reason. With \
    --at, the commit is sent at that moment (wall clock), not before: an orchestrator that gives \
    every host the same moment has them switch within the agreement of their clocks, not the \
    spread of its own connections. \
    Exit status: 0 committed, 1 refused, rolled back or gone, 2 bad id or no program.")]
pub struct CommitArgs {
    /// The update's id, as `pyreload prepare` printed it
    #[arg(value_parser = parse_update_id)]
    id: String,
    /// The program's control socket, for a program started with another PYRELOAD_RUNTIME_DIR
    /// (by default the id's pid names the program)
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Commit at this moment, in seconds since the Unix epoch (`date +%s.%N`), not before
    #[arg(long, value_name = "UNIX_TIME")]
    at: Option<f64>,
    /// Print the report as JSON on stdout
    #[arg(long)]
    json: bool,
}

/// Drop an update that `pyreload prepare` left prepared, changing nothing
#[derive(Args, Debug)]
#[command(after_help = "Examples:\n  \
    pyreload abort 4242-63f1a2b3c4d5e-1\n  \
    pyreload abort --json 4242-63f1a2b3c4d5e-1\n\n\
    The program goes on with the old version, as if the update had never been prepared. \
    Aborting an update that was aborted already, or whose lease ended, says so and succeeds. \
    A committed update cannot be aborted (`pyreload rollback` undoes it). \
    Exit status: 0 aborted (nothing changed), 1 already committed or gone, 2 bad id or no program.")]
pub struct AbortArgs {
    /// The update's id, as `pyreload prepare` printed it
    #[arg(value_parser = parse_update_id)]
    id: String,
    /// The program's control socket, for a program started with another PYRELOAD_RUNTIME_DIR
    /// (by default the id's pid names the program)
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Print what became of the update as JSON on stdout
    #[arg(long)]
    json: bool,
}

/// `60s`, `500ms`, `5m`, `1h`, or a number of seconds.
fn parse_lease(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration; write it as 60s, 500ms, 5m or 1h"))?;
    let seconds = match unit.trim() {
        "" | "s" => number,
        "ms" => number / 1000.0,
        "m" | "min" => number * 60.0,
        "h" => number * 3600.0,
        other => return Err(format!("unknown unit `{other}` in `{text}`; use ms, s, m or h")),
    };
    let lease = Duration::from_secs_f64(seconds);
    if lease < Duration::from_millis(1) || lease > crate::engine::prepared::MAX_LEASE {
        return Err(format!("a lease of `{text}` is out of range: give between 1ms and 24h"));
    }
    Ok(lease)
}

fn parse_update_id(text: &str) -> Result<String, String> {
    match parse_id(text) {
        Some(_) => Ok(text.to_string()),
        None => Err(format!(
            "`{text}` is not an update id; ids look like `4242-63f1a2b3c4d5e-1` (pid, instance, number), as \
             `pyreload prepare` prints them"
        )),
    }
}

pub fn prepare(args: PrepareArgs) -> i32 {
    let (source, parsed, found) = match super::spec_and_program(&args.spec, &args.target) {
        Ok(found) => found,
        Err(code) => return code,
    };
    let request = Request::Prepare {
        protocol: PROTOCOL_VERSION,
        spec_path: source.path.clone(),
        spec_text: source.text.clone(),
        lease_ms: args.lease.as_millis() as u64,
    };
    let timeout = Duration::from_millis(parsed.safe_point.timeout_ms() + parsed.safe_point.commit_timeout_ms())
        + Duration::from_secs(120);
    let known = Some((source.path.as_str(), source.text.as_str()));
    match exchange(&found.socket, &request, Some(timeout)) {
        Ok(Response::Prepared { prepared, report }) => {
            if args.json {
                let mut json = serde_json::to_value(&prepared).expect("prepared updates serialize");
                json["lease_ms"] = (args.lease.as_millis() as u64).into();
                json["report"] = serde_json::to_value(&report).expect("reports serialize");
                println!("{}", serde_json::to_string_pretty(&json).expect("JSON prints"));
            } else {
                print!("{}", prepared_text(&prepared, &report, args.lease));
            }
            EXIT_OK
        }
        Ok(response) => print_response(response, args.json, known),
        Err(e) => {
            lost_contact(&found, &e);
            EXIT_REFUSED
        }
    }
}

fn prepared_text(prepared: &PreparedInfo, report: &crate::report::Report, lease: Duration) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Prepared `{}` on `{}` (pid {}): {} -> {}, not committed yet",
        report.update,
        report.program,
        report.pid,
        report.from.as_deref().unwrap_or("(none)"),
        report.to
    );
    let _ = writeln!(out, "  id: {}", prepared.id);
    let _ = writeln!(
        out,
        "  lease: {} (it aborts by itself at {} unless committed)",
        describe(lease),
        clock(prepared.expires_at)
    );
    for m in &report.modules {
        let _ = writeln!(out, "  module {}  ({})", m.module, m.source);
    }
    let t = &report.timings;
    let _ = writeln!(
        out,
        "  time: prepare {:.2} ms, wait {:.2} ms ({} checks), stage {:.2} ms",
        t.prepare_ms, t.wait_ms, report.safe_point_checks, t.stage_ms
    );
    for w in &report.warnings {
        let _ = writeln!(out, "  note: {w}");
    }
    let _ = writeln!(
        out,
        "  next: `pyreload commit {0}` or `pyreload abort {0}`",
        prepared.id
    );
    out
}

pub fn commit(args: CommitArgs) -> i32 {
    if let Some(at) = args.at {
        let now = crate::process::state::unix_seconds(std::time::SystemTime::now());
        if !at.is_finite() || at - now > 3600.0 {
            eprint!(
                "{}",
                Problem::new(format!("--at {at} is more than an hour away (it is {now:.3} now)"))
                    .with_help("give a moment in seconds since the Unix epoch, e.g. `date -d '+2 seconds' +%s.%N`")
                    .render(None)
            );
            return super::EXIT_USAGE;
        }
    }
    let request = Request::Commit {
        protocol: PROTOCOL_VERSION,
        id: args.id.clone(),
    };
    send(&args.id, args.socket.as_ref(), &request, args.json, true, args.at)
}

pub fn abort(args: AbortArgs) -> i32 {
    let request = Request::Abort {
        protocol: PROTOCOL_VERSION,
        id: args.id.clone(),
    };
    send(&args.id, args.socket.as_ref(), &request, args.json, false, None)
}

/// Finds the program, waits until `at` (the program found first, so that
/// the moment is the commit's), and sends the request.
fn send(id: &str, socket: Option<&PathBuf>, request: &Request, json: bool, commit: bool, at: Option<f64>) -> i32 {
    let found = match find(id, socket) {
        Ok(found) => found,
        Err(problem) => {
            if json {
                println!("{}", serde_json::json!({ "error": problem }));
            }
            eprint!("{}", problem.render(None));
            return EXIT_REFUSED;
        }
    };
    if let Some(at) = at {
        let now = crate::process::state::unix_seconds(std::time::SystemTime::now());
        if at > now {
            std::thread::sleep(Duration::from_secs_f64(at - now));
        }
    }
    // A commit waits for its safe point and runs the update's own code,
    // each bounded by the spec; this only guards against a wedged program.
    match exchange(&found.socket, request, Some(Duration::from_secs(600))) {
        Ok(Response::Fate(fate)) => {
            if json {
                println!("{}", serde_json::to_string_pretty(&fate).expect("fates serialize"));
            } else {
                print!("{}", fate_text(&fate));
            }
            EXIT_OK
        }
        // Abort: a commit that was refused or rolled back changed nothing.
        Ok(Response::Report(report)) if !commit => {
            let code = print_response(Response::Report(report.clone()), json, None);
            if report.outcome == Outcome::Committed {
                code
            } else {
                EXIT_OK
            }
        }
        Ok(response) => print_response(response, json, None),
        Err(e) => {
            lost_contact(&found, &e);
            EXIT_REFUSED
        }
    }
}

fn fate_text(fate: &PreparedFate) -> String {
    let state = match fate.state.as_str() {
        "aborted" | "expired" | "cancelled" => "Aborted (nothing changed)",
        "rolled_back" => "Rolled back (nothing changed)",
        "refused" => "Refused (nothing changed)",
        "committed" => "Committed",
        _ => "Ended",
    };
    format!(
        "{state}: `{}` ({})\n  {} (at {})\n",
        fate.update,
        fate.id,
        fate.why,
        clock(fate.at)
    )
}

/// The program an id belongs to: the one on `socket`, or the one whose pid
/// the id names.
fn find(id: &str, socket: Option<&PathBuf>) -> Result<client::Target, Problem> {
    if let Some(socket) = socket {
        return client::find(&Selector::Socket(socket.clone())).map_err(|e| e.problem());
    }
    let (pid, _, _) = parse_id(id).expect("ids are checked when parsed");
    let dir = crate::control::runtime_dir::path();
    let path = crate::control::runtime_dir::socket_for_pid(&dir, pid);
    if !path.exists() || !crate::control::runtime_dir::process_alive(pid) {
        let running = client::find_all(None)
            .map(|all| {
                all.iter()
                    .map(|t| format!("`{}` (pid {})", t.info.name, t.info.pid))
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default();
        let mut problem = Problem::new(format!(
            "the update {id} is gone: pid {pid}, which prepared it, no longer runs under `pyreload run` (the \
             program exited or was restarted, and a restarted program does not know the update); nothing was \
             changed by it"
        ));
        problem = if running.is_empty() {
            problem.with_help(format!("looked for {}", path.display()))
        } else {
            problem.with_help(format!(
                "running now: {running}; prepare the update again there if it is still wanted"
            ))
        };
        return Err(problem);
    }
    client::find(&Selector::Pid(pid)).map_err(|e| e.problem())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leases_parse() {
        assert_eq!(parse_lease("60s"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_lease("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_lease("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_lease("90"), Ok(Duration::from_secs(90)));
        assert!(parse_lease("soon").is_err());
        assert!(parse_lease("3d").is_err());
        assert!(parse_lease("0s").is_err());
        assert!(parse_lease("48h").is_err());
    }
}
