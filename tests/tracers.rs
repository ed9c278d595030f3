//! A program's own tracers survive an update, on every CPython version:
//! `sys.settrace` in the main thread and in a worker (as under a debugger or
//! `coverage run`), and from 3.12 on a `sys.monitoring` tool of its own.
//! pyreload hooks threads only for the commit window, and leaves each tracer
//! as it found it.

mod common;

use std::time::Duration;

use common::{probe, Hosted, Sandbox, PROBE_LOOP};

/// The CPython `major.minor` this pyreload embeds.
const VERSION: &str = env!("PYRELOAD_BUILD_PYTHON_VERSION");

fn at_least_3_12() -> bool {
    let minor: u32 = VERSION.split_once('.').unwrap().1.parse().unwrap();
    minor >= 12
}

/// Traces `work.step` with `sys.settrace` in a worker thread and the main
/// thread; on 3.12+ also counts its lines with a `sys.monitoring` tool
/// under the coverage tool id.
const TRACED: &str = r#"
import sys, threading, time
import shared, work

def tracer(frame, event, arg):
    if frame.f_code.co_name == "step":
        shared.TRACED[0] += 1
    return tracer

def worker():
    sys.settrace(tracer)
    while True:
        shared.WORKER_TRACE[0] = sys.gettrace()
        time.sleep(0.001)
        work.step()

if sys.version_info >= (3, 12):
    mon = sys.monitoring
    mon.use_tool_id(mon.COVERAGE_ID, "app-coverage")
    def on_line(code, line):
        if code.co_name == "step":
            shared.LINES[0] += 1
    mon.register_callback(mon.COVERAGE_ID, mon.events.LINE, on_line)
    mon.set_events(mon.COVERAGE_ID, mon.events.LINE)

threading.Thread(target=worker, name="worker", daemon=True).start()
sys.settrace(tracer)
"#;

const SHARED: &str = "TRACED = [0]\nLINES = [0]\nWORKER_TRACE = [None]\n";

const WORK: &str = "VERSION = 1\n\ndef step():\n    return VERSION\n";

const SPEC: &str = "[update]\nname = \"t\"\nto = \"2\"\n\n[[reload]]\nmodule = \"work\"\n";

/// Reads an integer the program reports.
fn number(p: &mut Hosted, expr: &str) -> u64 {
    let answer = p.ask(expr);
    answer.parse().unwrap_or_else(|_| panic!("{expr} gave {answer:?}"))
}

/// Waits until `expr` grows past `from`: the tracer is still called.
fn grows(p: &mut Hosted, expr: &str, from: u64) {
    let mut now = from;
    common::wait_until(
        Duration::from_secs(20),
        || {
            now = number(p, expr);
            now > from
        },
        || format!("{expr} stayed at {from}: the tracer no longer receives events"),
    );
}

#[test]
fn a_programs_tracers_still_receive_events_after_an_update() {
    let sandbox = Sandbox::new();
    sandbox.write("shared.py", SHARED);
    sandbox.write("work.py", WORK);
    sandbox.write("traced.py", &format!("{TRACED}{PROBE_LOOP}"));
    let mut p = probe(&sandbox, &["traced.py"]);
    let monitored = at_least_3_12();
    // Control: the tracers run before the update.
    grows(&mut p, "shared.TRACED[0]", 0);
    if monitored {
        grows(&mut p, "shared.LINES[0]", 0);
    }

    sandbox.write("work.py", &WORK.replace("VERSION = 1", "VERSION = 2"));
    let spec = sandbox.write("update.toml", SPEC);
    let (code, report) = sandbox.apply_json(&p, &spec);
    assert_eq!(code, 0, "{report:#}\n{}", p.logs());
    assert_eq!(report["outcome"], "committed", "{report:#}");
    assert_eq!(p.ask("work.step()"), "2");

    // Each thread still has its own tracer, and it is still called.
    assert_eq!(p.ask("sys.gettrace() is tracer"), "True");
    let traced = number(&mut p, "shared.TRACED[0]");
    grows(&mut p, "shared.TRACED[0]", traced);
    assert_eq!(p.ask("shared.WORKER_TRACE[0] is tracer"), "True");
    if monitored {
        // The program's tool keeps its id and events, and pyreload's own
        // tool id is free again.
        assert_eq!(
            p.ask("[sys.monitoring.get_tool(i) for i in range(6)]"),
            "[None, 'app-coverage', None, None, None, None]"
        );
        assert_eq!(
            p.ask("sys.monitoring.get_events(1) == sys.monitoring.events.LINE"),
            "True"
        );
        let lines = number(&mut p, "shared.LINES[0]");
        grows(&mut p, "shared.LINES[0]", lines);
    }
}

#[test]
fn with_every_monitoring_tool_id_taken_the_update_is_refused_and_nothing_changes() {
    if !at_least_3_12() {
        eprintln!("CPython {VERSION} has no sys.monitoring; nothing to test");
        return;
    }
    let sandbox = Sandbox::new();
    sandbox.write("work.py", WORK);
    sandbox.write(
        "greedy.py",
        &format!("import sys, work\nfor i in range(6):\n    sys.monitoring.use_tool_id(i, f'tool{{i}}')\n{PROBE_LOOP}"),
    );
    let mut p = probe(&sandbox, &["greedy.py"]);
    sandbox.write("work.py", &WORK.replace("VERSION = 1", "VERSION = 2"));
    let spec = sandbox.write("update.toml", SPEC);
    let (code, report) = sandbox.apply_json(&p, &spec);
    assert_ne!(code, 0, "{report:#}");
    let text = report.to_string();
    assert!(
        text.contains("every sys.monitoring tool id (0 to 5) is in use"),
        "{report:#}"
    );
    assert_eq!(p.ask("work.step()"), "1");
    assert_eq!(
        p.ask("[sys.monitoring.get_tool(i) for i in range(6)]"),
        "['tool0', 'tool1', 'tool2', 'tool3', 'tool4', 'tool5']"
    );
}

/// A virtualenv of the build interpreter with coverage from PyPI, made once
/// and kept under target/.
fn coverage_venv() -> std::path::PathBuf {
    let venv = common::repo().join("target").join(format!("coverage-venv-{VERSION}"));
    let python = venv.join("bin/python");
    let ready = venv.join("coverage-installed");
    if !ready.exists() {
        let build_python = env!("PYRELOAD_BUILD_PYTHON");
        let made = std::process::Command::new(build_python)
            .args(["-m", "venv", "--clear"])
            .arg(&venv)
            .output()
            .unwrap();
        assert!(made.status.success(), "{}", common::stderr(&made));
        let pip = std::process::Command::new(&python)
            .args(["-m", "pip", "install", "--quiet", "coverage==7.6.*"])
            .output()
            .unwrap();
        assert!(pip.status.success(), "pip install coverage: {}", common::stderr(&pip));
        std::fs::write(&ready, "").unwrap();
    }
    venv
}

/// The program `coverage run` measures: it waits for a line on stdin, then
/// calls `work.step()`, and exits.
const MEASURED: &str = r#"
import sys
import work
print("ready", flush=True)
sys.stdin.readline()
print(work.step(), flush=True)
"#;

#[test]
#[ignore = "installs coverage from PyPI into target/coverage-venv-*; .ci/run runs it on every version"]
fn a_program_under_coverage_run_is_updated_and_coverage_sees_the_new_code_run() {
    let venv = coverage_venv();
    let sandbox = Sandbox::new();
    sandbox.write("work.py", WORK);
    sandbox.write("measured.py", MEASURED);
    let mut p = common::Hosted::start(
        &sandbox,
        common::Launch {
            args: ["-m", "coverage", "run", "measured.py"]
                .iter()
                .map(|a| a.to_string())
                .collect(),
            cwd: sandbox.path().to_path_buf(),
            interactive: true,
            env: {
                let mut env = vec![("VIRTUAL_ENV", venv.display().to_string())];
                // From 3.12 coverage can measure with a sys.monitoring tool
                // of its own instead of sys.settrace: use that there.
                if at_least_3_12() {
                    env.push(("COVERAGE_CORE", "sysmon".to_string()));
                }
                env
            },
        },
    );
    p.expect_line("ready");
    // The new step() runs a line the old one does not have: line 5.
    sandbox.write(
        "work.py",
        "VERSION = 2\n\ndef step():\n    if VERSION == 2:\n        return 'new code ran'\n    return VERSION\n",
    );
    let spec = sandbox.write("update.toml", SPEC);
    let (code, report) = sandbox.apply_json(&p, &spec);
    assert_eq!(code, 0, "{report:#}\n{}", p.logs());
    assert_eq!(report["outcome"], "committed", "{report:#}");
    assert_eq!(p.ask(""), "new code ran");
    let status = p.wait(Duration::from_secs(60));
    assert!(status.success(), "{}", p.logs());
    let json = std::process::Command::new(venv.join("bin/python"))
        .args(["-m", "coverage", "json", "-o", "-", "--include", "work.py"])
        .current_dir(sandbox.path())
        .output()
        .unwrap();
    assert!(json.status.success(), "{}", common::stderr(&json));
    let data: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    let executed = &data["files"]["work.py"]["executed_lines"];
    assert!(
        executed.as_array().unwrap().contains(&serde_json::json!(5)),
        "coverage did not see the new code run after the update: {executed}"
    );
}
