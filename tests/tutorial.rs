//! Runs docs/tutorial.md, so the tutorial fails CI when it goes stale.
//!
//! In ```console blocks, each `$ command` runs with this build's
//! `pyreload` first on PATH, from the repository root, and must exit with
//! status 0 (a command shown failing ends in `; echo "exit status: $?"`, so
//! its status is part of its output). Every line under it must be a whole
//! line of its output, in the same order, where `...` stands for anything;
//! the tutorial may leave lines of the output out. A ```console background
//! block is started and left running until its expected lines appear. Port
//! 7070 becomes a free port, so the test can run beside others.

mod common;

use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use common::{repo, Sandbox};

/// One `$ command` and the lines expected in its output.
struct Step {
    command: String,
    expected: Vec<String>,
    background: bool,
}

fn steps(markdown: &str) -> Vec<Step> {
    let mut steps = Vec::new();
    let mut in_block: Option<bool> = None;
    for line in markdown.lines() {
        match (in_block, line.trim_end()) {
            (None, fence) if fence.starts_with("```console") => in_block = Some(fence.contains("background")),
            (Some(_), "```") => in_block = None,
            (Some(background), text) => {
                if let Some(command) = text.strip_prefix("$ ") {
                    steps.push(Step {
                        command: command.to_string(),
                        expected: Vec::new(),
                        background,
                    });
                } else if let Some(step) = steps.last_mut() {
                    step.expected.push(text.to_string());
                }
            }
            (None, _) => {}
        }
    }
    steps
}

/// Whether the whole of `line` matches `pattern`, where `...` in the
/// pattern stands for anything (trailing spaces aside).
fn matches(pattern: &str, line: &str) -> bool {
    let (pattern, line) = (pattern.trim_end(), line.trim_end());
    let parts: Vec<&str> = pattern.split("...").collect();
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if parts.len() == 1 {
        return line == pattern;
    }
    if !line.starts_with(first) || line.len() < first.len() + last.len() || !line.ends_with(last) {
        return false;
    }
    let mut rest = &line[first.len()..line.len() - last.len()];
    for part in &parts[1..parts.len() - 1] {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    true
}

/// Whether each expected line matches a line of `output`, in order. On
/// failure, the first expected line not found (after the earlier ones).
fn find_in_order<'a>(expected: &'a [String], output: &str) -> Result<(), &'a str> {
    let mut lines = output.lines();
    for pattern in expected.iter().filter(|e| !e.trim().is_empty()) {
        if !lines.any(|line| matches(pattern, line)) {
            return Err(pattern);
        }
    }
    Ok(())
}

fn check_output(step: &Step, status: std::process::ExitStatus, output: &str) {
    assert!(
        status.success(),
        "docs/tutorial.md is stale.\n$ {}\nexited with {status}; a command that fails must end in `; echo \"exit status: $?\"`. Its output:\n{output}",
        step.command
    );
    if let Err(expected) = find_in_order(&step.expected, output) {
        panic!(
            "docs/tutorial.md is stale.\n$ {}\nexpected a line like:\n  {expected}\n(after the lines shown before it) but the output was:\n{output}",
            step.command
        );
    }
}

/// `sh -c COMMAND`, with its stderr on its stdout as a terminal shows
/// them: interleaved in the order they were written.
fn shell(sandbox: &Sandbox, command: &str, path: &str) -> Command {
    let mut cmd = Command::new("sh");
    cmd.args(["-c", &format!("exec 2>&1\n{command}")])
        .current_dir(repo())
        .env("PATH", path)
        .env("PYRELOAD_RUNTIME_DIR", sandbox.runtime_dir())
        .env("NO_COLOR", "1")
        .env_remove("VIRTUAL_ENV");
    cmd
}

/// A background command (`sh -c "cd ... && pyreload run ..."`), started in
/// its own process group and ended, group and all, when dropped, even when
/// the test fails.
struct Background(Child);

impl Drop for Background {
    fn drop(&mut self) {
        let group = nix::unistd::Pid::from_raw(-(self.0.id() as i32));
        let _ = nix::sys::signal::kill(group, nix::sys::signal::Signal::SIGTERM);
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[test]
fn every_command_in_the_tutorial_gives_the_output_it_shows() {
    let sandbox = Sandbox::new();
    let markdown = std::fs::read_to_string(repo().join("docs/tutorial.md")).unwrap();
    let port = free_port().to_string();
    let markdown = markdown.replace("7070", &port);
    let bin_dir = Path::new(common::BIN).parent().unwrap().display().to_string();
    let path = format!("{bin_dir}:{}", std::env::var("PATH").unwrap());
    let steps = steps(&markdown);
    assert!(steps.len() >= 10, "the tutorial has only {} commands", steps.len());
    let mut background: Vec<Background> = Vec::new();
    let log = sandbox.path().join("background.log");
    for step in &steps {
        if step.background {
            let child = shell(&sandbox, &step.command, &path)
                .stdout(std::fs::File::create(&log).unwrap())
                .process_group(0)
                .spawn()
                .unwrap();
            background.push(Background(child));
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                let output = std::fs::read_to_string(&log).unwrap_or_default();
                if find_in_order(&step.expected, &output).is_ok() {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "$ {} never printed {:?}; it printed:\n{output}",
                    step.command,
                    step.expected
                );
                std::thread::sleep(Duration::from_millis(20));
            }
            continue;
        }
        let out = shell(&sandbox, &step.command, &path).output().unwrap();
        let output = String::from_utf8_lossy(&out.stdout).into_owned();
        check_output(step, out.status, &output);
    }
    drop(background);
}

#[test]
fn the_matcher_treats_three_dots_as_anything() {
    assert!(matches("kvserver (pid ...)", "kvserver (pid 4242)"));
    assert!(matches(
        "  pause: ... ms (... other threads stopped)   total: ... ms",
        "  pause: 0.4 ms (10 other threads stopped)   total: 2 ms"
    ));
    assert!(!matches("version: 2.0", "  version: 1.0"));
    assert!(!matches("a ... b", "b then a"));
    // Whole lines only.
    assert!(matches("GET greeting -> VALUE hello", "GET greeting -> VALUE hello"));
    assert!(!matches(
        "GET greeting -> VALUE hello",
        "GET greeting -> VALUE hello world"
    ));
    assert!(!matches("VALUE hello", "GET greeting -> VALUE hello"));
    assert!(!matches("a ... b", "a x b c"));
    assert!(!matches("ab...ba", "aba"));
    assert!(matches("ab...ba", "abba"));
    assert!(matches("... ms", "0.4 ms"));
}

#[test]
fn expected_lines_must_come_in_order() {
    let expected = ["one".to_string(), "three".to_string()];
    assert_eq!(find_in_order(&expected, "one\ntwo\nthree\n"), Ok(()));
    assert_eq!(find_in_order(&expected, "three\ntwo\none\n"), Err("three"));
    assert_eq!(find_in_order(&expected, "one\n"), Err("three"));
}
