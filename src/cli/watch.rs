//! `pyreload watch`: apply every spec dropped into a directory.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use clap::Args;

use super::apply::{read_spec, request_update};
use super::{error, TargetArgs, EXIT_USAGE};
use crate::control::protocol::Response;

/// Apply each update spec dropped into a directory; write its result beside it
#[derive(Args, Debug)]
#[command(after_help = "Examples:\n  \
    pyreload watch deploy/\n  \
    cp specs/v1-to-v2.toml deploy/     # in another terminal\n\n\
    Each *.toml file created or changed in the directory is checked and applied to the program \
    (the one the spec's `program` names, or the one --pid/--socket picks). The result goes beside \
    it as <spec>.result.json: the report, or {\"error\": ...}. Runs until interrupted.")]
pub struct WatchArgs {
    /// The directory to watch
    dir: PathBuf,
    #[command(flatten)]
    target: TargetArgs,
}

pub fn watch(args: WatchArgs) -> i32 {
    let (_watcher, batches) =
        match crate::watch::watch(&args.dir, false, |p| p.extension().is_some_and(|e| e == "toml")) {
            Ok(w) => w,
            Err(e) => {
                error(format!("{e:#}"));
                return EXIT_USAGE;
            }
        };
    eprintln!(
        "pyreload: watching {} for update specs (*.toml); Ctrl-C to stop",
        args.dir.display()
    );
    // A spec is applied once per content: (path -> mtime it was applied at).
    let mut done: HashMap<PathBuf, SystemTime> = HashMap::new();
    for batch in batches {
        for path in batch {
            if !is_spec(&path) {
                continue;
            }
            let Ok(modified) = std::fs::metadata(&path).and_then(|m| m.modified()) else {
                continue;
            };
            if done.get(&path) == Some(&modified) {
                continue;
            }
            done.insert(path.clone(), modified);
            let (summary, result) = apply_one(&path, &args.target);
            let result_path = result_path(&path);
            match std::fs::write(
                &result_path,
                serde_json::to_string_pretty(&result).expect("results serialize") + "\n",
            ) {
                Ok(()) => println!("{}: {summary} (result in {})", path.display(), result_path.display()),
                Err(e) => error(format!("could not write {}: {e}", result_path.display())),
            }
        }
    }
    EXIT_USAGE
}

fn is_spec(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "toml") && path.is_file()
}

/// `deploy/v2.toml` -> `deploy/v2.toml.result.json`
fn result_path(spec: &Path) -> PathBuf {
    let mut name = spec.file_name().unwrap_or_default().to_os_string();
    name.push(".result.json");
    spec.with_file_name(name)
}

/// Checks and applies one spec; returns a one-line summary and the result.
fn apply_one(path: &Path, target: &super::TargetArgs) -> (String, serde_json::Value) {
    let failed = |message: String| {
        (
            format!("error: {message}"),
            serde_json::json!({ "error": { "message": message } }),
        )
    };
    let Ok(source) = read_spec(&path.to_path_buf()) else {
        return failed(format!("could not read {}", path.display()));
    };
    let spec = match crate::spec::parse(&source) {
        Ok(spec) => spec,
        Err(problems) => {
            // The same diagnostics as on stderr, in the result file too, so
            // whoever dropped the spec can see what to fix without the log.
            for p in &problems {
                eprint!("{}", p.render(Some((&source.path, &source.text))));
            }
            let summary = format!(
                "{} is not a valid update spec ({} problem(s)); nothing was sent to the program",
                path.display(),
                problems.len()
            );
            let first = problems.first().map(ToString::to_string).unwrap_or_default();
            return (
                format!("error: {summary}: {first}"),
                serde_json::json!({
                    "error": { "message": summary },
                    "problems": problems,
                }),
            );
        }
    };
    match request_update(&source, &spec, target, false, false) {
        Ok(Response::Report(report)) => (
            report.one_line(),
            serde_json::to_value(&report).expect("reports serialize"),
        ),
        Ok(Response::Error(problem)) => {
            eprint!("{}", problem.render(Some((&source.path, &source.text))));
            (format!("error: {problem}"), serde_json::json!({ "error": problem }))
        }
        Ok(_) => failed("the program answered with something other than a report".into()),
        Err(code) => failed(format!("could not reach the program (exit status {code})")),
    }
}
