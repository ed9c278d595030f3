//! `pyreload diff`: what an update would change, as source diffs.

use std::io::IsTerminal;
use std::time::Duration;

use clap::Args;
use similar::TextDiff;

use super::apply::lost_contact;
use super::{error, TargetArgs, EXIT_OK, EXIT_REFUSED};
use crate::control::client::exchange;
use crate::control::protocol::{ModuleSources, Request, Response, PROTOCOL_VERSION};

/// Show what an update spec would change, as a diff of each module's source
#[derive(Args, Debug)]
#[command(after_help = "Examples:\n  \
    pyreload diff specs/v1-to-v2.toml\n  \
    pyreload diff --pid 4242 specs/v1-to-v2.toml | less -R\n\n\
    For each module the spec updates: a unified diff of the source the program runs now against \
    the new source. What runs now is what the program read when it imported the module, or what \
    the last update loaded, even if the file has changed on disk since. Where that is not known \
    (a frozen module, a .pyc without its source), it says so. Colored on a terminal. Changes \
    nothing.")]
pub struct DiffArgs {
    /// The update spec (TOML)
    spec: std::path::PathBuf,
    #[command(flatten)]
    target: TargetArgs,
}

pub fn diff(args: DiffArgs) -> i32 {
    let (source, _, found) = match super::spec_and_program(&args.spec, &args.target) {
        Ok(found) => found,
        Err(code) => return code,
    };
    let request = Request::Sources {
        protocol: PROTOCOL_VERSION,
        spec_path: source.path.clone(),
        spec_text: source.text.clone(),
    };
    match exchange(&found.socket, &request, Some(Duration::from_secs(60))) {
        Ok(Response::Sources { modules }) => {
            let color = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
            for m in &modules {
                print!("{}", render(m, color));
            }
            EXIT_OK
        }
        Ok(Response::Error(problem)) => {
            eprint!("{}", problem.render(Some((&source.path, &source.text))));
            EXIT_REFUSED
        }
        Ok(_) => {
            error("the program answered with something other than sources");
            EXIT_REFUSED
        }
        Err(e) => {
            lost_contact(&found, &e);
            EXIT_REFUSED
        }
    }
}

/// One module's unified diff, with `---`/`+++` headers naming the files.
fn render(m: &ModuleSources, color: bool) -> String {
    let (old_name, old_text) = match (&m.running, &m.unknown) {
        (Some((path, text)), _) => (format!("{} (running)", path), text.as_str()),
        (None, Some(why)) => {
            return format!(
                "{}: the source it runs is not known, so its change cannot be shown: {why}\n  \
                 new source: {}\n",
                m.module, m.new_path
            );
        }
        (None, None) => (format!("{} (new module)", m.module), ""),
    };
    let new_name = format!("{} (new)", m.new_path);
    let diff = TextDiff::from_lines(old_text, m.new_text.as_str());
    let text = diff
        .unified_diff()
        .context_radius(3)
        .header(&old_name, &new_name)
        .to_string();
    if text.is_empty() {
        return format!("{}: no change\n", m.module);
    }
    if !color {
        return text;
    }
    text.lines()
        .map(|line| {
            let code = match line.as_bytes().first() {
                Some(b'+') if !line.starts_with("+++") => "32",
                Some(b'-') if !line.starts_with("---") => "31",
                Some(b'@') => "36",
                _ => return format!("{line}\n"),
            };
            format!("\x1b[{code}m{line}\x1b[0m\n")
        })
        .collect()
}
