//! `pyreload new`: draft an update spec from two source trees.

use std::path::PathBuf;

use clap::Args;

use super::{error, EXIT_OK, EXIT_USAGE};
use crate::draft;

/// Draft an update spec from the difference between two source trees
#[derive(Args, Debug)]
#[command(after_help = "Examples:\n  \
    pyreload new --from case-study/v1 --to case-study/v2\n  \
    pyreload new --from case-study/v3 --to case-study/v4 --output specs/my-update.toml\n\n\
    Each tree is a directory on sys.path (a module's name is its path in the tree). The draft \
    lists the changed and new modules in dependency order, with `source` paths relative to where \
    the spec is written, and marks with TODO every decision left to you: the versions, tables to \
    `reset`, and [[transform]]s for classes whose instance layout changed.")]
pub struct NewArgs {
    /// The tree the program runs now
    #[arg(long = "from", value_name = "DIR")]
    from: PathBuf,
    /// The tree with the new version
    #[arg(long = "to", value_name = "DIR")]
    to: PathBuf,
    /// Write the draft here instead of to stdout (never overwrites a file)
    #[arg(long, short, value_name = "FILE")]
    output: Option<PathBuf>,
}

pub fn new(args: NewArgs) -> i32 {
    let found = match draft::compare(&args.from, &args.to) {
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
    let text = draft::render(&found, &args.from, &args.to, &spec_dir);
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
