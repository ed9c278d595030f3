//! The command line: argument definitions and dispatch to one module per
//! subcommand.
//!
//! Exit status, for every subcommand but `run` (which exits as the program
//! does): 0 success, 1 update refused or rolled back, 2 usage, spec or
//! connection error.

mod apply;
mod diff;
mod new;
mod prepared;
mod progress;
mod rollback;
mod run;
mod schema;
mod status;
mod watch;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::control::client::Selector;

/// The update succeeded, or the query was answered.
pub const EXIT_OK: i32 = 0;
/// The update was refused or rolled back; the program runs as before.
pub const EXIT_REFUSED: i32 = 1;
/// Bad usage, a spec that does not parse, or no program to talk to.
pub const EXIT_USAGE: i32 = 2;

#[derive(Parser)]
#[command(
    name = "pyreload",
    version,
    about = "Update a running Python program without restarting it",
    long_about = "Update a running Python program without restarting it.\n\n\
        Start the program under `pyreload run`, describe an update in a TOML spec \
        (modules to reload, when it is safe, how to check it worked), and \
        `pyreload apply` it. The whole update takes effect, or none of it does.",
    after_help = "Examples:\n  \
        pyreload run --name kvserver --version 1.0 -m kvserver --port 7000\n  \
        pyreload check specs/v1-to-v2.toml\n  \
        pyreload diff specs/v1-to-v2.toml\n  \
        pyreload apply specs/v1-to-v2.toml\n  \
        pyreload status\n  \
        pyreload rollback\n  \
        pyreload prepare specs/v1-to-v2.toml    (then: pyreload commit ID, or pyreload abort ID)\n\n\
        Exit status: 0 success, 1 update refused or rolled back, 2 usage, spec or connection error.\n\
        `pyreload run` exits with the program's own status."
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    Run(run::RunArgs),
    Apply(apply::ApplyArgs),
    Check(apply::CheckArgs),
    Diff(diff::DiffArgs),
    New(new::NewArgs),
    Rollback(rollback::RollbackArgs),
    Prepare(prepared::PrepareArgs),
    Commit(prepared::CommitArgs),
    Abort(prepared::AbortArgs),
    Status(status::StatusArgs),
    Schema(schema::SchemaArgs),
    Watch(watch::WatchArgs),
}

/// How `apply`, `check` and `status` find the program.
#[derive(Args, Debug, Clone)]
pub struct TargetArgs {
    /// The process id of the program (as `pyreload status` shows it).
    #[arg(long, value_name = "PID", conflicts_with = "socket")]
    pid: Option<u32>,
    /// The program's control socket, for programs started with another
    /// PYRELOAD_RUNTIME_DIR.
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
}

impl TargetArgs {
    fn selector(&self, program: Option<String>) -> Selector {
        match (&self.pid, &self.socket) {
            (Some(pid), _) => Selector::Pid(*pid),
            (None, Some(socket)) => Selector::Socket(socket.clone()),
            (None, None) => Selector::Auto { program },
        }
    }
}

/// Parses the command line and runs the subcommand; returns the exit status.
pub fn main() -> i32 {
    let cli = Cli::parse();
    match cli.command {
        Command::Run(args) => run::run(args),
        Command::Apply(args) => apply::apply(args),
        Command::Check(args) => apply::check(args),
        Command::Diff(args) => diff::diff(args),
        Command::New(args) => new::new(args),
        Command::Rollback(args) => rollback::rollback(args),
        Command::Prepare(args) => prepared::prepare(args),
        Command::Commit(args) => prepared::commit(args),
        Command::Abort(args) => prepared::abort(args),
        Command::Status(args) => status::status(args),
        Command::Schema(args) => schema::schema(args),
        Command::Watch(args) => watch::watch(args),
    }
}

/// Finds the program a command talks to, printing why when there is none.
/// `named_by` is the spec's `program` key, when the name came from a spec:
/// the error then points at that line.
pub fn find_program(
    target: &TargetArgs,
    name: Option<String>,
    named_by: Option<(&crate::spec::SpecSource, &toml::Spanned<String>)>,
) -> Result<crate::control::client::Target, i32> {
    use crate::control::client::{self, FindError};
    client::find(&target.selector(name)).map_err(|e| {
        let mut problem = e.problem();
        let mut known = None;
        if let (FindError::NoneNamed { .. }, Some((source, program))) = (&e, named_by) {
            problem = problem.at(source.location(program.span()), "no running program has this name");
            known = Some((source.path.as_str(), source.text.as_str()));
        }
        eprint!("{}", problem.render(known));
        EXIT_USAGE
    })
}

/// The program a spec is for: the one `[update] program` names (an error
/// points at that name if none runs), or the one `target` selects.
pub fn find_program_for(
    target: &TargetArgs,
    source: &crate::spec::SpecSource,
    spec: &crate::spec::Spec,
) -> Result<crate::control::client::Target, i32> {
    let program = spec.update.program.as_ref();
    find_program(
        target,
        program.map(|p| p.get_ref().clone()),
        program.map(|p| (source, p)),
    )
}

/// Reads and parses the spec at `path` and finds its program: the first
/// steps of every subcommand that sends a spec.
pub fn spec_and_program(
    path: &std::path::PathBuf,
    target: &TargetArgs,
) -> Result<
    (
        crate::spec::SpecSource,
        crate::spec::Spec,
        crate::control::client::Target,
    ),
    i32,
> {
    let source = apply::read_spec(path)?;
    let spec = apply::parse_spec(&source)?;
    let found = find_program_for(target, &source, &spec)?;
    Ok((source, spec, found))
}

/// Prints an error the way every subcommand does.
pub fn error(message: impl std::fmt::Display) {
    eprintln!("error: {message}");
}
