//! `pyreload new`: draft an update spec from two source trees, or from a
//! running program against its files on disk.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use super::apply::lost_contact;
use super::{error, TargetArgs, EXIT_OK, EXIT_REFUSED, EXIT_USAGE};
use crate::control::client::{self, exchange};
use crate::control::protocol::{Request, Response, PROTOCOL_VERSION};
use crate::draft::{self, Origin};

/// Draft an update spec from the difference between two source trees, or
/// between a running program and its files
#[derive(Args, Debug)]
#[command(after_help = "Examples:\n  \
    pyreload new --from case-study/v1 --to case-study/v2\n  \
    pyreload new --from case-study/v3 --to case-study/v4 --output specs/my-update.toml\n  \
    pip install -U somelib && pyreload new --running --output up.toml\n\n\
    With --from/--to, each tree is a directory on sys.path (a module's name is its path in the \
    tree). With --running, the old version is what each module of the running program runs, and \
    the new one is its file on disk now (after `git pull`, `pip install -U` or an edit): only \
    modules the program has loaded are compared. Either way the draft lists the changed modules, \
    and the new modules they import (a new module nothing changed imports is left out), in \
    dependency order, with `source` paths relative to where the spec is written. It marks with \
    TODO every decision left to you: the versions, tables to `reset`, and [[transform]]s for \
    classes whose instance layout changed.")]
pub struct NewArgs {
    /// The tree the program runs now
    #[arg(
        long = "from",
        value_name = "DIR",
        required_unless_present = "running",
        requires = "to"
    )]
    from: Option<PathBuf>,
    /// The tree with the new version
    #[arg(long = "to", value_name = "DIR", requires = "from")]
    to: Option<PathBuf>,
    /// Compare the running program's modules with their files on disk
    #[arg(long, conflicts_with_all = ["from", "to"])]
    running: bool,
    #[command(flatten)]
    target: TargetArgs,
    /// With --running: only the program with this name (when several are running)
    #[arg(long, value_name = "NAME", requires = "running")]
    name: Option<String>,
    /// Write the draft here instead of to stdout (never overwrites a file)
    #[arg(long, short, value_name = "FILE")]
    output: Option<PathBuf>,
}

pub fn new(args: NewArgs) -> i32 {
    let running;
    let (found, origin) = match (&args.from, &args.to) {
        (Some(from), Some(to)) => (draft::compare(from, to), Origin::Trees { old: from, new: to }),
        _ => {
            let target = match client::find(&args.target.selector(args.name.clone())) {
                Ok(target) => target,
                Err(e) => {
                    error(e);
                    return EXIT_USAGE;
                }
            };
            let request = Request::Loaded {
                protocol: PROTOCOL_VERSION,
            };
            let program = match exchange(&target.socket, &request, Some(Duration::from_secs(60))) {
                Ok(Response::Loaded(program)) => program,
                Ok(Response::Error(problem)) => {
                    eprint!("{}", problem.render(None));
                    return EXIT_REFUSED;
                }
                Ok(_) => {
                    error("the program answered with something other than its modules");
                    return EXIT_REFUSED;
                }
                Err(e) => {
                    lost_contact(&target, &e);
                    return EXIT_REFUSED;
                }
            };
            running = target.info;
            (
                draft::compare_running(&program),
                Origin::Running {
                    name: &running.name,
                    pid: running.pid,
                },
            )
        }
    };
    let found = match found {
        Ok(found) => found,
        Err(e) => {
            error(format!("{e:#}"));
            return EXIT_USAGE;
        }
    };
    let spec_dir = match &args.output {
        Some(path) => path
            .parent()
            .map(|p| {
                if p.as_os_str().is_empty() {
                    PathBuf::from(".")
                } else {
                    p.to_path_buf()
                }
            })
            .unwrap_or_else(|| PathBuf::from(".")),
        None => PathBuf::from("."),
    };
    let text = draft::render(&found, &origin, &spec_dir);
    match &args.output {
        None => print!("{text}"),
        Some(path) => {
            let written = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(path)
                .and_then(|mut f| std::io::Write::write_all(&mut f, text.as_bytes()));
            if let Err(e) = written {
                error(format!("could not write {}: {e}", path.display()));
                return EXIT_USAGE;
            }
            eprintln!(
                "wrote {} ({} module(s) changed); decide its TODOs, then run `pyreload check {}`",
                path.display(),
                found.modules.len(),
                path.display()
            );
        }
    }
    EXIT_OK
}
