//! `pyreload run`: start a program under the host.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::Args;

use super::{error, EXIT_USAGE};
use crate::host::{self, embed::Target, RunOptions};

/// Run a Python program so that it can be updated while it runs
#[derive(Args, Debug)]
#[command(after_help = "Examples:\n  \
    pyreload run app.py --port 8000\n  \
    pyreload run --name kvserver --version 1.0 -m kvserver --port 7000\n\n\
    The program runs as under `python3` (or the active virtualenv's python): same sys.argv, \
    sys.path, site-packages, stdin/stdout/stderr, signals and exit status. It listens for \
    `pyreload apply` on a private control socket and costs nothing between updates. \
    sys.executable is pyreload's stand-in for python, so that spawned workers can be updated \
    too (see --no-spawn-members).")]
pub struct RunArgs {
    /// Name shown by `pyreload status` and matched against a spec's
    /// `[update] program` [default: the script's or module's name]
    #[arg(long, value_name = "NAME")]
    name: Option<String>,
    /// The version the program starts at; a spec's `from` must match it
    #[arg(long = "version", value_name = "VERSION")]
    program_version: Option<String>,
    /// Dev mode: when a file of one of the program's own modules changes,
    /// reload it (safely: a broken edit is refused and logged)
    #[arg(long)]
    reload: bool,
    /// How many committed updates `pyreload rollback` can undo, newest
    /// first. Each keeps the code it replaced; older ones are let go, so a
    /// program updated for months does not grow without bound
    #[arg(long, value_name = "N", default_value_t = 16)]
    rollback_depth: usize,
    /// Leave sys.executable the real python. By default it is a stand-in
    /// for python (in the runtime directory) that makes the program's
    /// multiprocessing spawn and forkserver workers (`uvicorn --workers`,
    /// billiard) members of its tree, so `apply` updates them too; any
    /// other command it runs as python itself. With this flag those
    /// workers are plain python processes that no update reaches
    #[arg(long)]
    no_spawn_members: bool,
    /// Run a library module as a script, as `python -m MODULE`
    #[arg(short = 'm', value_name = "MODULE")]
    module: Option<String>,
    /// The script to run (omit with -m), then the arguments passed to the program
    #[arg(value_name = "SCRIPT_AND_ARGS", trailing_var_arg = true, allow_hyphen_values = true)]
    rest: Vec<OsString>,
}

pub fn run(args: RunArgs) -> i32 {
    let (target, program_args) = match (args.module, args.rest.split_first()) {
        (Some(module), _) => (Target::Module(module), args.rest.clone()),
        (None, Some((script, rest))) => {
            if let Err(e) = host::check_script(&PathBuf::from(script)) {
                error(format!("{e:#}"));
                return EXIT_USAGE;
            }
            (Target::Script(script.clone()), rest.to_vec())
        }
        (None, None) => {
            error("nothing to run: give a script, or -m MODULE\n\nUsage: pyreload run [OPTIONS] (SCRIPT | -m MODULE) [ARGS]...");
            return EXIT_USAGE;
        }
    };
    match host::run(RunOptions {
        name: args.name,
        version: args.program_version,
        reload: args.reload,
        rollback_depth: args.rollback_depth,
        target,
        args: program_args,
        spawn_members: !args.no_spawn_members,
    }) {
        Ok(status) => status,
        Err(e) => {
            error(format!("{e:#}"));
            EXIT_USAGE
        }
    }
}
