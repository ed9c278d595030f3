//! Safe points: the stopped world, the default inactive set, conditions,
//! update points and suspended generators, each checked from inside a live
//! program.

mod common;

use std::time::Duration;

use common::{probe, probe_with_env, status, Hosted, PhaseHold, Sandbox, PROBE_LOOP};

fn spec(modules: &[&str], safe_point: &str, extra: &str) -> String {
    let mut s = String::from("[update]\nname = \"t\"\nto = \"2\"\n");
    for m in modules {
        s.push_str(&format!("\n[[reload]]\nmodule = \"{m}\"\n"));
    }
    s.push_str(&format!("\n[safe_point]\n{safe_point}\n{extra}"));
    s
}

fn apply(sandbox: &Sandbox, p: &Hosted, name: &str, text: &str) -> (i32, serde_json::Value) {
    let path = sandbox.write(name, text);
    sandbox.apply_json(p, &path)
}

/// Three threads that never stop touching `shared.COUNTER`: one spinning
/// in pure Python, one sleeping in C between increments, one with its own
/// trace function (as under a debugger or coverage), counting events.
const BUSY: &str = r#"
import sys, threading, time
import shared, busy_mod

def spin():
    while True:
        shared.COUNTER[0] += 1

def sleeper():
    while True:
        time.sleep(0.001)
        shared.COUNTER[0] += 1

def step():
    shared.COUNTER[0] += 1

def traced():
    def tracer(frame, event, arg):
        shared.EVENTS[0] += 1
        return tracer
    sys.settrace(tracer)
    while True:
        time.sleep(0.001)
        step()

for f in (spin, sleeper, traced):
    threading.Thread(target=f, name=f.__name__, daemon=True).start()
"#;

const BUSY_MOD: &str = r#"
import time
import shared

VALUE = 1

def frozen():
    """True when no other thread moved the counter while this one slept,
    the GIL released, for 300 ms (time.sleep)."""
    before = shared.COUNTER[0]
    for _ in range(30):
        time.sleep(0.01)
        if shared.COUNTER[0] != before:
            return False
    return True

def moves():
    """True as soon as another thread moves the counter while this one
    sleeps, the GIL released; False if none does in 60 s."""
    before = shared.COUNTER[0]
    for _ in range(6000):
        time.sleep(0.01)
        if shared.COUNTER[0] != before:
            return True
    return False
"#;

#[test]
fn no_other_thread_runs_during_the_commit_window_and_all_resume_after() {
    let sandbox = Sandbox::new();
    sandbox.write("shared.py", "COUNTER = [0]\nEVENTS = [0]\n");
    sandbox.write("busy_mod.py", BUSY_MOD);
    sandbox.write("busy.py", &format!("{BUSY}{PROBE_LOOP}"));
    let mut p = probe(&sandbox, &["busy.py"]);
    // Control: outside an update, the other threads do move the counter
    // while the caller sleeps, so the check below can fail.
    assert_eq!(p.ask("busy_mod.moves()"), "True");
    common::wait_until(
        Duration::from_secs(60),
        || p.ask("shared.EVENTS[0] > 0") == "True",
        || "the tracer never ran".into(),
    );

    sandbox.write("busy_mod.py", &BUSY_MOD.replace("VALUE = 1", "VALUE = 2"));
    let (code, report) = apply(
        &sandbox,
        &p,
        "frozen.toml",
        &spec(&["busy_mod"], "", "[check]\nafter = \"busy_mod.frozen()\"\n"),
    );
    assert_eq!(code, 0, "the world was not stopped during [check] after: {report:#}");
    assert_eq!(report["outcome"], "committed");
    // The three workers and the main thread, blocked reading stdin.
    assert_eq!(report["stopped_threads"], 4, "{report:#}");
    assert!(report["timings"]["pause_ms"].as_f64().unwrap() >= 300.0, "{report:#}");
    assert_eq!(p.ask("busy_mod.VALUE"), "2");

    // Every thread runs again, and the traced one still has its tracer.
    let counts = |p: &mut Hosted| -> (u64, u64) {
        let v = p.ask("(shared.COUNTER[0], shared.EVENTS[0])");
        let (a, b) = v.trim_matches(|c| c == '(' || c == ')').split_once(", ").unwrap();
        (a.parse().unwrap(), b.parse().unwrap())
    };
    let (c1, e1) = counts(&mut p);
    common::eventually(Duration::from_secs(30), || {
        let (c2, e2) = counts(&mut p);
        match c2 > c1 && e2 > e1 {
            true => Ok(()),
            false => Err(format!(
                "threads did not resume, or the tracer was lost: {c1}->{c2}, {e1}->{e2}"
            )),
        }
    });
    assert_eq!(
        p.ask("sorted(t.name for t in __import__('threading').enumerate())"),
        "['MainThread', 'sleeper', 'spin', 'traced']"
    );
}

/// The worker is inside `run_forever` before the program says `ready`.
const WORKER: &str = r#"
import sys, threading, time
import loop_mod
threading.Thread(target=loop_mod.run_forever, name="worker", daemon=True).start()
loop_mod.RUNNING.wait()
"#;

#[test]
fn a_changed_function_that_is_running_blocks_the_update_unless_allowed() {
    let sandbox = Sandbox::new();
    let v1 = "import threading, time\nRUNNING = threading.Event()\n\ndef run_forever():\n    RUNNING.set()\n    while True:\n        time.sleep(0.005)\n\ndef helper():\n    return 1\n";
    sandbox.write("loop_mod.py", v1);
    sandbox.write("prog.py", &format!("{WORKER}{PROBE_LOOP}"));
    let mut p = probe(&sandbox, &["prog.py"]);
    let modules = p.module_state();
    sandbox.write(
        "loop_mod.py",
        &v1.replace("0.005", "0.004").replace("return 1", "return 2"),
    );

    // By default every changed function must be inactive.
    let (code, report) = apply(
        &sandbox,
        &p,
        "default.toml",
        &spec(&["loop_mod"], "timeout_ms = 300", ""),
    );
    assert_eq!(code, 1, "{report:#}");
    assert_eq!(report["outcome"], "refused");
    assert_eq!(
        report["safe_point"]["inactive"],
        serde_json::json!(["loop_mod.run_forever", "loop_mod.helper"])
    );
    let problem = &report["problem"];
    assert!(
        problem["message"]
            .as_str()
            .unwrap()
            .contains("not reached within 300 ms"),
        "{problem:#}"
    );
    let causes = problem["causes"].to_string();
    assert!(
        causes.contains("thread `worker` is in run_forever at") && causes.contains("loop_mod.py:7"),
        "{causes}"
    );
    assert_eq!(p.ask("loop_mod.helper()"), "1", "a refused update changed nothing");
    p.module_state().assert_same(&modules, "the refused update");

    // check says so before anyone applies it.
    let out = sandbox.run(&[
        "check",
        "--pid",
        &p.pid().to_string(),
        sandbox.path().join("default.toml").to_str().unwrap(),
    ]);
    assert!(
        common::stdout(&out).contains("warning: thread `worker` is in run_forever"),
        "{}",
        common::stdout(&out)
    );

    // The running call may finish with the old code: allow it.
    let (code, report) = apply(
        &sandbox,
        &p,
        "allow.toml",
        &spec(
            &["loop_mod"],
            "timeout_ms = 2000\nallow_active = [\"loop_mod.run_forever\"]",
            "",
        ),
    );
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(report["safe_point"]["inactive"], serde_json::json!(["loop_mod.helper"]));
    assert_eq!(p.ask("loop_mod.helper()"), "2");
}

#[test]
fn a_condition_delays_the_commit_until_it_holds() {
    let sandbox = Sandbox::new();
    // The condition counts its evaluations, so the test knows it has been
    // found false.
    let gate = "OPEN = [False]\nCHECKS = [0]\nVALUE = 1\n\ndef is_open():\n    CHECKS[0] += 1\n    return OPEN[0]\n";
    sandbox.write("gate.py", gate);
    sandbox.write("prog.py", &format!("import sys, gate\n{PROBE_LOOP}"));
    let mut p = probe(&sandbox, &["prog.py"]);
    sandbox.write("gate.py", &gate.replace("VALUE = 1", "VALUE = 2"));
    let path = sandbox.write(
        "cond.toml",
        &spec(&["gate"], "condition = \"gate.is_open()\"\ntimeout_ms = 60000", ""),
    );

    let apply = sandbox.spawn_apply_json(&p.socket(), &path);
    // The update waits, and has found the condition false a few times.
    let socket = p.socket();
    common::wait_for_phase(&socket, "wait");
    common::eventually(Duration::from_secs(60), || {
        let checks: u64 = p.ask("gate.CHECKS[0]").parse().unwrap();
        let status = common::status(&socket);
        assert_eq!(
            status["in_progress"]["phase"], "wait",
            "the update stopped waiting while the condition was false: {status:#}"
        );
        match checks >= 3 {
            true => Ok(()),
            false => Err(format!("the condition was evaluated {checks} times")),
        }
    });
    assert_eq!(p.ask("gate.VALUE"), "1", "committed before the condition held");
    assert_eq!(p.ask("gate.OPEN.__setitem__(0, True)"), "None");
    let out = apply.wait_with_output().unwrap();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["outcome"], "committed", "{report:#}");
    assert!(report["safe_point_checks"].as_u64().unwrap() >= 3, "{report:#}");
    assert_eq!(p.ask("gate.VALUE"), "2");
}

#[test]
fn a_condition_that_never_holds_times_out_and_a_bad_one_is_refused_at_once() {
    let sandbox = Sandbox::new();
    sandbox.write("gate.py", "OPEN = [False]\nVALUE = 1\n");
    sandbox.write("prog.py", &format!("import sys, gate\n{PROBE_LOOP}"));
    let mut p = probe(&sandbox, &["prog.py"]);
    let modules = p.module_state();
    sandbox.write("gate.py", "OPEN = [False]\nVALUE = 2\n");

    let (code, report) = apply(
        &sandbox,
        &p,
        "never.toml",
        &spec(&["gate"], "condition = \"gate.OPEN[0]\"\ntimeout_ms = 300", ""),
    );
    assert_eq!(code, 1);
    assert!(
        report["problem"]["message"]
            .as_str()
            .unwrap()
            .contains("the condition `gate.OPEN[0]` stayed false"),
        "{report:#}"
    );

    let (code, report) = apply(
        &sandbox,
        &p,
        "syntax.toml",
        &spec(&["gate"], "condition = \"gate.OPEN[0] ==\"", ""),
    );
    assert_eq!(code, 1);
    let problem = &report["problem"];
    assert!(
        problem["message"]
            .as_str()
            .unwrap()
            .contains("`[safe_point] condition` is not a valid Python expression"),
        "{problem:#}"
    );
    assert_eq!(problem["location"]["line"], 9, "{problem:#}");
    assert_eq!(report["timings"]["wait_ms"], 0.0, "refused in prepare, without waiting");

    let (code, report) = apply(
        &sandbox,
        &p,
        "raises.toml",
        &spec(&["gate"], "condition = \"gate.CLOSED\"", ""),
    );
    assert_eq!(code, 1);
    let message = report["problem"]["message"].as_str().unwrap();
    assert!(
        message.contains("`[safe_point] condition` raised") && message.contains("AttributeError"),
        "{message}"
    );
    assert_eq!(p.ask("gate.VALUE"), "1");
    p.module_state().assert_same(&modules, "three refused updates");
}

const TICKER: &str = r#"
import sys, threading, time
import pyreload, shared, tick_mod

def ticker():
    while True:
        shared.AT_POINT[0] = True
        if pyreload.update_point("tick"):
            shared.WAITED[0] += 1
        shared.AT_POINT[0] = False
        tick_mod.tick()
        time.sleep(0.002)

threading.Thread(target=ticker, name="ticker", daemon=True).start()
"#;

#[test]
fn an_update_point_commits_while_a_thread_waits_there() {
    let sandbox = Sandbox::new();
    // Each version of tick() leaves its mark in shared.RAN.
    sandbox.write("shared.py", "AT_POINT = [False]\nWAITED = [0]\nRAN = [None]\n");
    sandbox.write(
        "tick_mod.py",
        "import shared\n\ndef tick():\n    shared.RAN[0] = 'v1'\n",
    );
    sandbox.write("prog.py", &format!("{TICKER}{PROBE_LOOP}"));
    let mut p = probe(&sandbox, &["prog.py"]);
    sandbox.write(
        "tick_mod.py",
        "import shared\n\ndef tick():\n    shared.RAN[0] = 'v2'\n",
    );

    // The check runs in the stopped world; the ticker is inside
    // update_point at that moment, so its flag is up.
    let (code, report) = apply(
        &sandbox,
        &p,
        "tick.toml",
        &spec(
            &["tick_mod"],
            "update_point = \"tick\"\ntimeout_ms = 5000",
            "[check]\nafter = \"shared.AT_POINT[0]\"\n",
        ),
    );
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(report["safe_point"]["update_point"], "tick");
    common::wait_until(
        Duration::from_secs(60),
        || p.ask("shared.WAITED[0]") == "1",
        || "the ticker never reported waiting".into(),
    );
    // The ticker left the update point and ran tick() again: the new one.
    // (tick() runs right after update_point() returns, so once the ticker
    // has moved past the point the mark is the new code's.)
    assert_eq!(p.ask("shared.RAN.__setitem__(0, None)"), "None");
    common::eventually(Duration::from_secs(30), || match p.ask("shared.RAN[0]").as_str() {
        "None" => Err("the ticker never ran tick() again".into()),
        "'v2'" => Ok(()),
        other => panic!("the ticker runs the old code: {other}"),
    });

    let never =
        spec(&["tick_mod"], "update_point = \"never\"\ntimeout_ms = 300", "").replace("to = \"2\"", "to = \"3\"");
    let (code, report) = apply(&sandbox, &p, "never.toml", &never);
    assert_eq!(code, 1);
    assert!(
        report["problem"]["message"]
            .as_str()
            .unwrap()
            .contains("no thread reached pyreload.update_point(\"never\")"),
        "{report:#}"
    );
}

#[test]
fn a_suspended_generator_in_a_changed_function_blocks_until_it_finishes() {
    let sandbox = Sandbox::new();
    let v1 = "def numbers():\n    i = 0\n    while True:\n        yield i\n        i += 1\n";
    sandbox.write("gen_mod.py", v1);
    sandbox.write(
        "prog.py",
        &format!("import sys, gen_mod\ng = gen_mod.numbers()\nnext(g)\n{PROBE_LOOP}"),
    );
    let mut p = probe(&sandbox, &["prog.py"]);
    sandbox.write("gen_mod.py", &v1.replace("i += 1", "i += 2"));
    let text = spec(&["gen_mod"], "timeout_ms = 300", "");
    assert_eq!(p.ask("'asyncio' in sys.modules"), "False");
    let (code, report) = apply(&sandbox, &p, "gen.toml", &text);
    assert_eq!(code, 1, "{report:#}");
    // Looking for suspended coroutines did not import asyncio into a
    // program without it (which, loaded, could take the whole wait).
    assert_eq!(p.ask("'asyncio' in sys.modules"), "False");
    let causes = report["problem"]["causes"].to_string();
    assert!(
        causes.contains("generator numbers is suspended at") && causes.contains("gen_mod.py:4"),
        "{causes}"
    );
    assert_eq!(p.ask("g.close()"), "None");
    let (code, report) = apply(&sandbox, &p, "gen2.toml", &text);
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(
        p.ask("list(zip(range(3), gen_mod.numbers()))"),
        "[(0, 0), (1, 2), (2, 4)]"
    );
}

/// A request thread and its handler, which the update changes. Once in
/// `handle`, the thread stays there until the interpreter's switch
/// interval is the one the stopped world sets while it lets blocking
/// threads run on alone (50 µs): only then can it leave, so the commit's
/// first look finds it inside, and only running it alone lets it out.
/// On its way out it notes whether the collector was on.
const ALONE_V1: &str = r#"
import gc, sys, threading, time
ENTER = threading.Event()
INSIDE = threading.Event()
HANDLED = [0]
GC_WHILE_ALONE = []

def serve():
    while True:
        ENTER.wait()
        ENTER.clear()
        handle()
        HANDLED[0] += 1

def handle():
    INSIDE.set()
    while sys.getswitchinterval() > 0.0001:
        time.sleep(0.0002)
    GC_WHILE_ALONE.append(gc.isenabled())
    INSIDE.clear()
    return 1
"#;

/// The new version: the same server, whose handler answers at once (for
/// the probe to call).
fn alone_v2() -> String {
    let (head, _) = ALONE_V1.split_once("def handle():").unwrap();
    format!("{head}def handle():\n    return 2\n")
}

fn alone_spec(safe_point: &str) -> String {
    spec(&["alone_mod"], &format!("timeout_ms = 1000\n{safe_point}"), "")
}

/// Starts the request thread's program with the commit held (so the thread
/// can be sent into `handle` after the wait and staging found it outside),
/// applies `text` in the background and, once the update is held at its
/// commit, sends the thread in and lets the commit go.
fn apply_with_a_thread_inside(text: &str) -> (Sandbox, Hosted, i32, serde_json::Value) {
    let sandbox = Sandbox::new();
    sandbox.write("alone_mod.py", ALONE_V1);
    sandbox.write(
        "prog.py",
        &format!(
            "import sys, threading\nimport alone_mod\nthreading.Thread(target=alone_mod.serve, name=\"server\", daemon=True).start()\n{PROBE_LOOP}"
        ),
    );
    let hold = PhaseHold::new(&sandbox);
    let mut p = probe_with_env(&sandbox, &["prog.py"], vec![hold.env()]);
    sandbox.write("alone_mod.py", &alone_v2());
    let spec = sandbox.write("alone.toml", text);
    hold.arm("commit");
    let socket = p.socket();
    let apply = sandbox.spawn_apply_json(&socket, &spec);
    hold.wait_for(&socket, "commit");
    assert_eq!(
        p.ask("alone_mod.ENTER.set() or alone_mod.INSIDE.wait(60)"),
        "True",
        "the request thread never entered handle"
    );
    assert_eq!(status(&socket)["in_progress"]["phase"], "commit");
    hold.release("commit");
    let out = apply.wait_with_output().unwrap();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("apply printed no JSON ({e}): {}", String::from_utf8_lossy(&out.stderr)));
    (sandbox, p, out.status.code().unwrap_or(-1), report)
}

#[test]
fn a_thread_inside_a_replaced_function_at_the_commit_runs_on_alone_until_it_leaves() {
    // Budget enough for any machine: the verdict must not depend on how
    // soon the thread gets a core.
    let (_sandbox, mut p, code, report) = apply_with_a_thread_inside(&alone_spec("run_alone_us = 1000000"));
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(report["outcome"], "committed");
    let alone = report["timings"]["run_alone_ms"].as_f64().unwrap_or(0.0);
    assert!(alone > 0.0, "the thread was not let run alone: {report:#}");
    let pause = report["timings"]["pause_ms"].as_f64().unwrap();
    assert!(pause >= alone, "running alone is part of the pause: {report:#}");
    // The call it was in finished with the old code; the next is new.
    common::eventually(Duration::from_secs(60), || {
        match p.ask("alone_mod.HANDLED[0]").as_str() {
            "1" => Ok(()),
            other => Err(format!("the running handle() did not finish: HANDLED = {other}")),
        }
    });
    assert_eq!(p.ask("alone_mod.handle()"), "2");
    // No collection could hold the stopped world while it ran alone; the
    // program's collector is back on after.
    assert_eq!(p.ask("alone_mod.GC_WHILE_ALONE"), "[False]");
    assert_eq!(p.ask("alone_mod.gc.isenabled()"), "True");
    // The thread goes on serving, on the new version.
    assert_eq!(p.ask("alone_mod.ENTER.set()"), "None");
    common::eventually(Duration::from_secs(60), || {
        match p.ask("alone_mod.HANDLED[0]").as_str() {
            "2" => Ok(()),
            other => Err(format!("the server thread stopped serving: HANDLED = {other}")),
        }
    });
}

#[test]
fn with_run_alone_off_the_same_thread_keeps_the_update_waiting_until_it_is_refused() {
    let (_sandbox, mut p, code, report) = apply_with_a_thread_inside(&alone_spec("run_alone_us = 0"));
    assert_eq!(code, 1, "{report:#}");
    assert_eq!(report["outcome"], "refused");
    assert!(report["timings"].get("run_alone_ms").is_none(), "{report:#}");
    let causes = report["problem"]["causes"].to_string();
    assert!(causes.contains("thread `server` is in handle at"), "{causes}");
    assert_eq!(
        p.ask("alone_mod.INSIDE.is_set()"),
        "True",
        "still inside, on the old code"
    );
}
