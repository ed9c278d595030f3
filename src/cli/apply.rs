//! `pyreload apply` and `pyreload check`: send a spec to a running program.
//!
//! The spec is parsed and checked here first, so a malformed spec never
//! reaches the program. The host parses it again from the same text and
//! resolves it; any error it reports points into that text.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use super::{error, TargetArgs, EXIT_REFUSED, EXIT_USAGE};
use crate::control::client::{self, exchange};
use crate::control::protocol::{Request, Response, PROTOCOL_VERSION};
use crate::diagnostic::Problem;
use crate::spec::{self, SpecSource};

/// Apply an update spec to a running program, atomically
#[derive(Args, Debug)]
#[command(after_help = "Examples:\n  \
    pyreload apply specs/v1-to-v2.toml\n  \
    pyreload apply --pid 4242 --json specs/v1-to-v2.toml\n\n\
    The update commits whole, or is refused or rolled back and the program keeps running the old \
    version. Interrupting `pyreload apply` (Ctrl-C) before the commit cancels the update, with \
    nothing changed; `pyreload status` shows the phase of an update in progress. \
    Exit status: 0 applied, 1 refused, cancelled or rolled back, 2 bad spec or no program.")]
pub struct ApplyArgs {
    /// The update spec (TOML)
    spec: PathBuf,
    #[command(flatten)]
    target: TargetArgs,
    /// Print the report as JSON on stdout
    #[arg(long)]
    json: bool,
}

/// Validate an update spec against a running program, changing nothing
#[derive(Args, Debug)]
#[command(after_help = "Examples:\n  \
    pyreload check specs/v1-to-v2.toml\n\n\
    Does everything `apply` does before the commit: finds every module, reads and compiles \
    every new source, resolves every name and checks the versions. The program is not changed.")]
pub struct CheckArgs {
    /// The update spec (TOML)
    spec: PathBuf,
    #[command(flatten)]
    target: TargetArgs,
    /// Print the report as JSON on stdout
    #[arg(long)]
    json: bool,
}

pub fn apply(args: ApplyArgs) -> i32 {
    send(&args.spec, &args.target, args.json, false)
}

pub fn check(args: CheckArgs) -> i32 {
    send(&args.spec, &args.target, args.json, true)
}

fn send(path: &PathBuf, target: &TargetArgs, json: bool, dry_run: bool) -> i32 {
    let source = match read_spec(path) {
        Ok(source) => source,
        Err(code) => return code,
    };
    let parsed = match parse_spec(&source) {
        Ok(spec) => spec,
        Err(code) => return code,
    };
    let response = match request_update(&source, &parsed, target, dry_run, !json) {
        Ok(response) => response,
        Err(code) => return code,
    };
    print_response(response, json, Some((&source.path, &source.text)))
}

/// Finds the program and sends it the spec; the error is the exit status,
/// after the reason has been printed. With `show_progress`, a program with
/// worker processes shows on stderr how far the update has got while it
/// runs (see [`super::progress`]).
pub fn request_update(
    source: &SpecSource,
    parsed: &spec::Spec,
    target: &TargetArgs,
    dry_run: bool,
    show_progress: bool,
) -> Result<Response, i32> {
    let found = super::find_program_for(target, source, parsed)?;
    let request = Request::Apply {
        protocol: PROTOCOL_VERSION,
        spec_path: source.path.clone(),
        spec_text: source.text.clone(),
        dry_run,
    };
    // The host bounds its own wait by the spec's timeout; allow for that
    // plus a generous margin before deciding the program is stuck.
    let timeout = Duration::from_millis(parsed.safe_point.timeout_ms()) + Duration::from_secs(120);
    let _shown = (show_progress && !dry_run && !found.info.members.is_empty())
        .then(|| super::progress::show(found.socket.clone()));
    exchange(&found.socket, &request, Some(timeout)).map_err(|e| {
        lost_contact(&found, &e);
        EXIT_REFUSED
    })
}

/// Says what is known when the program stopped answering mid-request.
pub fn lost_contact(found: &client::Target, e: &std::io::Error) {
    let pid = found.info.pid;
    // A killed program closes its socket a moment before it is gone from
    // the process table: give it that moment before deciding.
    let deadline = std::time::Instant::now() + Duration::from_millis(500);
    while crate::control::runtime_dir::process_alive(pid) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    if crate::control::runtime_dir::process_alive(pid) {
        error(format!("lost contact with `{}` (pid {pid}): {e}", found.info.name));
    } else {
        error(format!(
            "`{}` (pid {pid}) exited before it answered; an update it had not committed by then was not applied",
            found.info.name
        ));
    }
}

/// Prints a host's answer to an update request (the report on stdout, any
/// problem on stderr) and returns the exit status it means. `known` is the
/// spec, to draw snippets from.
pub fn print_response(response: Response, json: bool, known: Option<(&str, &str)>) -> i32 {
    match response {
        Response::Report(report) => {
            if json {
                println!("{}", serde_json::to_string_pretty(&report).expect("reports serialize"));
            } else {
                print!("{}", report.to_text());
            }
            if let Some(problem) = &report.problem {
                eprint!("{}", problem.render(known));
            }
            report.outcome.exit_code()
        }
        Response::Error(problem) => {
            if json {
                println!("{}", serde_json::json!({ "error": problem }));
            }
            eprint!("{}", problem.render(known));
            EXIT_REFUSED
        }
        Response::Status(_)
        | Response::Sources { .. }
        | Response::Loaded(_)
        | Response::Member(_)
        | Response::Progress { .. }
        | Response::Prepared { .. }
        | Response::Fate(_) => {
            error("the program answered with something other than a report");
            EXIT_REFUSED
        }
    }
}

/// Parses and statically checks the spec, printing every problem; the
/// error is the exit status.
pub fn parse_spec(source: &SpecSource) -> Result<spec::Spec, i32> {
    spec::parse(source).map_err(|problems| {
        for p in &problems {
            eprint!("{}", p.render(Some((&source.path, &source.text))));
        }
        EXIT_USAGE
    })
}

/// Reads the spec and makes its path absolute, so the host resolves
/// `source = ...` against the spec's directory whatever its own cwd is.
pub fn read_spec(path: &PathBuf) -> Result<SpecSource, i32> {
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.clone());
    match std::fs::read_to_string(&absolute) {
        Ok(text) => Ok(SpecSource {
            path: absolute.display().to_string(),
            text,
        }),
        Err(e) => {
            eprint!(
                "{}",
                Problem::new(format!("could not read the spec {}: {e}", path.display())).render(None)
            );
            Err(EXIT_USAGE)
        }
    }
}
