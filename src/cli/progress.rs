//! What `pyreload apply` shows while a tree-wide update runs: the round,
//! how many members are ready, and what each blocked member waits for.
//!
//! It asks the root for `Progress` (which asks no member) a few times a
//! second, on its own connection, and writes to stderr: on a terminal a
//! block of lines redrawn in place and erased at the end, otherwise a plain
//! line each time something changed. stdout (the report, `--json`) is never
//! touched.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::control::client::exchange;
use crate::control::protocol::{Request, Response, PROTOCOL_VERSION};
use crate::process::wire::TreeProgress;

/// How often the root is asked.
const EVERY: Duration = Duration::from_millis(200);

/// Shows progress until dropped.
pub struct Shown {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Starts showing the progress of the tree-wide update at `socket`.
pub fn show(socket: PathBuf) -> Shown {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let thread = std::thread::Builder::new()
        .name("pyreload-progress".into())
        .spawn(move || watch(&socket, &flag))
        .ok();
    Shown { stop, thread }
}

impl Drop for Shown {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn watch(socket: &std::path::Path, stop: &AtomicBool) {
    let terminal = std::io::stderr().is_terminal();
    let mut drawn = 0usize;
    let mut last: Vec<String> = Vec::new();
    while !stop.load(Ordering::SeqCst) {
        std::thread::sleep(EVERY);
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let request = Request::Progress {
            protocol: PROTOCOL_VERSION,
        };
        let Ok(Response::Progress {
            progress: Some(progress),
        }) = exchange(socket, &request, Some(Duration::from_secs(1)))
        else {
            continue;
        };
        let lines = render(&progress);
        if lines == last {
            continue;
        }
        let mut err = std::io::stderr().lock();
        if terminal {
            if drawn > 0 {
                let _ = write!(err, "\x1b[{drawn}A\x1b[J");
            }
            for l in &lines {
                let _ = writeln!(err, "{l}");
            }
            drawn = lines.len();
        } else {
            for l in lines.iter().filter(|l| !last.contains(l)) {
                let _ = writeln!(err, "{l}");
            }
        }
        last = lines;
    }
    if terminal && drawn > 0 {
        let _ = write!(std::io::stderr(), "\x1b[{drawn}A\x1b[J");
    }
}

/// One summary line, then a line for each member that says what it waits for.
pub fn render(p: &TreeProgress) -> Vec<String> {
    let ready = p
        .members
        .iter()
        .filter(|m| matches!(m.stand.as_str(), "staged" | "committed") || m.stand.starts_with("unaffected"))
        .count();
    let mut lines = vec![format!(
        "pyreload: `{}`: {}: {ready}/{} members ready",
        p.update,
        p.round,
        p.members.len()
    )];
    for m in p.members.iter().filter(|m| !m.waiting_for.is_empty()) {
        lines.push(format!(
            "  pid {} ({}): {}",
            m.pid,
            short(&m.role),
            m.waiting_for.join("; ")
        ));
    }
    lines
}

fn short(role: &str) -> String {
    const LONGEST: usize = 40;
    if role.chars().count() > LONGEST {
        format!("{}...", role.chars().take(LONGEST - 3).collect::<String>())
    } else {
        role.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::process::wire::MemberProgress;

    #[test]
    fn counts_the_ready_members_and_names_the_blocked_ones() {
        let member = |pid, stand: &str, why: &[&str]| MemberProgress {
            pid,
            role: "gunicorn: worker [notes.wsgi:app]".into(),
            stand: stand.into(),
            waiting_for: why.iter().map(|w| w.to_string()).collect(),
        };
        let p = TreeProgress {
            update: "web-v1-to-v2".into(),
            round: "stage".into(),
            members: vec![
                member(1, "unaffected (loads none of the spec's modules)", &[]),
                member(2, "staged", &[]),
                member(3, "waiting for its safe point", &["the condition `ok()` is false now"]),
            ],
        };
        assert_eq!(
            render(&p),
            [
                "pyreload: `web-v1-to-v2`: stage: 2/3 members ready",
                "  pid 3 (gunicorn: worker [notes.wsgi:app]): the condition `ok()` is false now",
            ]
        );
    }
}
