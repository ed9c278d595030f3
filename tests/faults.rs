//! Faults at any point of an update: `pyreload apply` killed in each phase,
//! two applies at once, code that never returns, and a program that exits
//! while an update waits. Whatever happens, the program ends up fully at
//! the old version or fully at the new one, with all its data, and keeps
//! serving.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::{probe, probe_with_env, status, wait_until, Hosted, PhaseHold, Sandbox, PROBE_LOOP};

/// Items the transform converts in each update. (Kills are aimed at phases
/// by holding the update there, not by making the phases long.)
const ITEMS: usize = 10_000;
/// Functions in `shop.big`: a module with more than a handful.
const FUNCTIONS: usize = 300;

fn big(version: &str) -> String {
    let mut text = format!("VERSION = {version:?}\n\n");
    for i in 0..FUNCTIONS {
        text.push_str(&format!("def f{i}(x):\n    return x + {i}\n\n"));
    }
    // One function that really changes, so the update has code to wait for.
    text.push_str(&format!("def tag():\n    return {:?}\n", format!("big-{version}")));
    text
}

const DATA_V1: &str = r#"
VERSION = "1"

class Item:
    def __init__(self, n):
        self.n = n

ITEMS = [Item(i) for i in range(10_000)]

def dump():
    return (len(ITEMS), sum(item.n for item in ITEMS))
"#;

const DATA_V2: &str = r#"
VERSION = "2"

class Item:
    def __init__(self, n):
        self.value = str(n)

ITEMS = []

def dump():
    return (len(ITEMS), sum(int(item.value) for item in ITEMS))
"#;

/// The request handler reads the items' representation directly: served
/// by the new handler before the data is converted (or the other way
/// round), a request fails.
const SERVER_V1: &str = r#"
VERSION = "1"
from . import data

def handle(line):
    i = int(line) % len(data.ITEMS)
    return str(data.ITEMS[i].n)
"#;

const SERVER_V2: &str = r#"
VERSION = "2"
from . import data

def handle(line):
    i = int(line) % len(data.ITEMS)
    return str(int(data.ITEMS[i].value))
"#;

const GATE: &str = r#"
import time
UNTIL = 0.0

def hold(seconds):
    """Keeps the safe-point condition false for this long."""
    global UNTIL
    UNTIL = time.monotonic() + seconds

def passable():
    return time.monotonic() >= UNTIL
"#;

const MIGRATE: &str = r#"
def to_v2(item):
    item.value = str(item.n)
    del item.n

def to_v1(item):
    item.n = int(item.value)
    del item.value
"#;

const PROGRAM: &str = r#"
import socket, sys, threading
import pyreload
import shop.big, shop.data, shop.server, shop.gate, shop.migrate

def serve(listener):
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=serve_conn, args=(conn,), daemon=True).start()

def serve_conn(conn):
    with conn, conn.makefile("rw") as f:
        for line in f:
            try:
                reply = shop.server.handle(line)
            except Exception as e:
                reply = f"ERR {type(e).__name__}: {e}"
            f.write(reply + "\n")
            f.flush()

listener = socket.create_server(("127.0.0.1", 0))
PORT = listener.getsockname()[1]
threading.Thread(target=serve, args=(listener,), daemon=True).start()

def state():
    item = vars(shop.data.ITEMS[0])
    return (shop.big.VERSION, shop.big.tag(), shop.data.VERSION, shop.server.VERSION,
            sorted(item), pyreload.version())
"#;

fn spec(from: &str, to: &str, migrate: &str, reverse: &str) -> String {
    format!(
        r#"[update]
name = "shop-{to}"
from = "{from}"
to = "{to}"

[[reload]]
module = "shop.big"
source = "v{to}/big.py"

[[reload]]
module = "shop.data"
source = "v{to}/data.py"

[[reload]]
module = "shop.server"
source = "v{to}/server.py"

[[transform]]
class = "shop.data.Item"
function = "shop.migrate.{migrate}"
reverse = "shop.migrate.{reverse}"

[safe_point]
condition = "shop.gate.passable()"
timeout_ms = 20000
"#
    )
}

/// The shop program under `pyreload run`, at version 1, with its specs.
struct Shop {
    sandbox: Sandbox,
    program: Hosted,
    socket: PathBuf,
    port: u16,
    /// Holds updates at a phase (test-only fault knob).
    hold: PhaseHold,
}

impl Shop {
    fn start() -> Shop {
        let sandbox = Sandbox::new();
        sandbox.write("shop/__init__.py", "");
        sandbox.write("shop/big.py", &big("1"));
        sandbox.write("shop/data.py", DATA_V1);
        sandbox.write("shop/server.py", SERVER_V1);
        sandbox.write("shop/gate.py", GATE);
        sandbox.write("shop/migrate.py", MIGRATE);
        for (v, data, server) in [("1", DATA_V1, SERVER_V1), ("2", DATA_V2, SERVER_V2)] {
            sandbox.write(&format!("v{v}/big.py"), &big(v));
            sandbox.write(&format!("v{v}/data.py"), data);
            sandbox.write(&format!("v{v}/server.py"), server);
        }
        sandbox.write("up.toml", &spec("1", "2", "to_v2", "to_v1"));
        sandbox.write("down.toml", &spec("2", "1", "to_v1", "to_v2"));
        sandbox.write("main.py", &format!("{PROGRAM}{PROBE_LOOP}"));
        let hold = PhaseHold::new(&sandbox);
        let mut program = probe_with_env(
            &sandbox,
            &["--name", "shop", "--version", "1", "main.py"],
            vec![hold.env()],
        );
        let port = program.ask("PORT").parse().unwrap();
        let socket = program.socket();
        Shop {
            sandbox,
            program,
            socket,
            port,
            hold,
        }
    }

    fn spec(&self, name: &str) -> PathBuf {
        self.sandbox.path().join(name)
    }

    /// `pyreload apply` of `spec`, started in the background.
    fn spawn_apply(&self, spec: &Path) -> std::process::Child {
        self.sandbox
            .pyreload()
            .args([
                "apply",
                "--socket",
                self.socket.to_str().unwrap(),
                spec.to_str().unwrap(),
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    }

    /// Starts `pyreload apply` of `up.toml` with the safe point held back
    /// (until `shop.gate.hold(0)`), and waits until the program reports
    /// the wait.
    fn apply_waiting(&mut self) -> std::process::Child {
        self.program.ask("shop.gate.hold(3600)");
        let apply = self.spawn_apply(&self.spec("up.toml"));
        wait_until(
            Duration::from_secs(60),
            || status(&self.socket)["in_progress"]["phase"] == "wait",
            || "the update never reached its wait".into(),
        );
        apply
    }

    fn version(&self) -> String {
        status(&self.socket)["version"].as_str().unwrap_or_default().to_string()
    }

    /// Waits until no update is in progress, and returns the last history
    /// entry.
    fn settled(&self) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let now = status(&self.socket);
            if now["in_progress"].is_null() {
                return now["history"]
                    .as_array()
                    .and_then(|h| h.last().cloned())
                    .unwrap_or_default();
            }
            assert!(Instant::now() < deadline, "an update stayed in progress: {now:#}");
            thread::sleep(Duration::from_millis(5));
        }
    }
}

/// What the program looks like, fully at one version.
fn expected_state(version: &str) -> String {
    let field = if version == "1" { "'n'" } else { "'value'" };
    format!("('{version}', 'big-{version}', '{version}', '{version}', [{field}], '{version}')")
}

/// Closed-loop clients on the program's TCP port; each reply is checked.
struct Load {
    stop: Arc<AtomicBool>,
    requests: Arc<AtomicUsize>,
    threads: Vec<thread::JoinHandle<Vec<String>>>,
}

impl Load {
    fn start(port: u16, clients: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let requests = Arc::new(AtomicUsize::new(0));
        let threads = (0..clients)
            .map(|c| {
                let (stop, requests) = (stop.clone(), requests.clone());
                thread::spawn(move || {
                    let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
                    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
                    let mut reader = BufReader::new(stream.try_clone().unwrap());
                    let mut writer = stream;
                    let mut failures = Vec::new();
                    let started = Instant::now();
                    let mut i = c * 7919;
                    while !stop.load(Ordering::SeqCst) && started.elapsed() < Duration::from_secs(240) {
                        i = (i + 104_729) % ITEMS;
                        let mut reply = String::new();
                        let ok = writeln!(writer, "{i}").is_ok() && reader.read_line(&mut reply).is_ok();
                        if !ok || reply.trim_end() != i.to_string() {
                            failures.push(format!("request {i} -> {reply:?}"));
                            if !ok {
                                break;
                            }
                        }
                        requests.fetch_add(1, Ordering::SeqCst);
                        thread::sleep(Duration::from_micros(300));
                    }
                    failures
                })
            })
            .collect();
        Load {
            stop,
            requests,
            threads,
        }
    }

    /// Stops the clients; returns every failed request.
    fn finish(self) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::SeqCst);
        let failures = self.threads.into_iter().flat_map(|t| t.join().unwrap()).collect();
        (self.requests.load(Ordering::SeqCst), failures)
    }
}

/// Where each kill is aimed: the update is held at the start of each phase
/// (the `hold` fault) while `pyreload apply` is killed, and "after the
/// answer" kills an apply that has already exited.
const TARGETS: [&str; 5] = ["prepare", "wait", "stage", "commit", "after the answer"];
/// Kills aimed at each target.
const KILLS_PER_TARGET: usize = 6;

#[test]
fn apply_killed_at_any_moment_leaves_the_program_at_one_version_and_serving() {
    let mut shop = Shop::start();
    let dump = shop.program.ask("shop.data.dump()");
    assert_eq!(dump, format!("({ITEMS}, {})", ITEMS * (ITEMS - 1) / 2));
    let load = Load::start(shop.port, 4);

    let mut killed_in = std::collections::BTreeMap::<&str, usize>::new();
    let mut outcomes = std::collections::BTreeMap::<String, usize>::new();
    for run in 0..TARGETS.len() * KILLS_PER_TARGET {
        let target = TARGETS[run % TARGETS.len()];
        let at = shop.version();
        let (spec, new) = if at == "1" {
            ("up.toml", "2")
        } else {
            ("down.toml", "1")
        };
        let mut child;
        if target == "after the answer" {
            child = shop.spawn_apply(&shop.spec(spec));
            let status = child.wait().unwrap();
            assert_eq!(
                status.code(),
                Some(0),
                "run {run}: the apply to be killed after its answer failed"
            );
        } else {
            shop.hold.arm(target);
            child = shop.spawn_apply(&shop.spec(spec));
            shop.hold.wait_for(&shop.socket, target);
        }
        child.kill().unwrap();
        child.wait().unwrap();
        shop.hold.release(target);
        *killed_in.entry(target).or_default() += 1;

        let last = shop.settled();
        let outcome = last["outcome"].as_str().unwrap_or("none").to_string();
        *outcomes.entry(outcome.clone()).or_default() += 1;
        let now = shop.version();
        let context = || format!("run {run}: killed in {target}, outcome {outcome}: {last:#}");
        let expected = match target {
            // Before the commit, a kill cancels the update.
            "prepare" | "wait" | "stage" => vec!["cancelled"],
            // From the commit on, the update runs to its end; at its start
            // the safe point is decided again, and may send it back to a
            // wait, where the kill is noticed.
            "commit" => vec!["committed", "cancelled"],
            _ => vec!["committed"],
        };
        assert!(
            expected.contains(&outcome.as_str()),
            "expected {expected:?}: {}",
            context()
        );
        assert_eq!(last["to"], new, "{}", context());
        let version = if outcome == "committed" { new } else { at.as_str() };
        assert_eq!(now, version, "{}", context());
        assert_eq!(
            shop.program.ask("state()"),
            expected_state(&now),
            "not fully at one version: {}",
            context()
        );
        assert_eq!(
            shop.program.ask("shop.data.dump()"),
            dump,
            "data changed: {}",
            context()
        );
    }
    let (requests, failures) = load.finish();
    eprintln!("applies killed in {killed_in:?}; outcomes {outcomes:?}; {requests} requests served");
    assert!(failures.is_empty(), "requests failed: {failures:#?}");
    assert!(requests > 0, "the clients were never served");
    for target in TARGETS {
        assert!(
            killed_in.get(target).copied().unwrap_or(0) >= 5,
            "too few kills in {target}: {killed_in:?}"
        );
    }
    assert!(
        outcomes.get("cancelled").copied().unwrap_or(0) >= 15 && outcomes.get("committed").copied().unwrap_or(0) >= 5,
        "both outcomes should occur: {outcomes:?}"
    );
}

#[test]
fn a_second_apply_during_an_update_is_refused_as_busy_and_the_first_completes() {
    let mut shop = Shop::start();
    let first = shop.apply_waiting();
    let shown = shop.sandbox.run(&["status", "--socket", shop.socket.to_str().unwrap()]);
    assert!(
        common::stdout(&shown).contains("updating: `shop-2`, in wait for"),
        "{}",
        common::stdout(&shown)
    );
    let second = shop.sandbox.run(&[
        "apply",
        "--socket",
        shop.socket.to_str().unwrap(),
        shop.spec("up.toml").to_str().unwrap(),
    ]);
    assert_eq!(second.status.code(), Some(1));
    assert!(
        common::stderr(&second).contains("another update is in progress in this program; nothing was changed"),
        "{}",
        common::stderr(&second)
    );
    let rollback = shop
        .sandbox
        .run(&["rollback", "--socket", shop.socket.to_str().unwrap()]);
    assert_eq!(rollback.status.code(), Some(1));
    assert!(
        common::stderr(&rollback).contains("an update is in progress"),
        "{}",
        common::stderr(&rollback)
    );
    shop.program.ask("shop.gate.hold(0)");
    let first = first.wait_with_output().unwrap();
    assert_eq!(
        first.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    assert_eq!(shop.program.ask("state()"), expected_state("2"));
    let history = status(&shop.socket)["history"].clone();
    assert_eq!(
        history.as_array().unwrap().len(),
        1,
        "only the first was an attempt: {history:#}"
    );
}

/// A tiny program whose update runs the given code: a module body, a
/// transformer, a condition or a check.
fn looping_program(sandbox: &Sandbox) -> Hosted {
    sandbox.write(
        "calc.py",
        "class Item:\n    def __init__(self, n):\n        self.n = n\n\nITEMS = [Item(i) for i in range(1000)]\n\ndef total():\n    return sum(i.n for i in ITEMS)\n",
    );
    sandbox.write(
        "mig.py",
        // The first statement of the loop is not the `try`: CPython 3.10
        // checks for a GIL request (and an async exception) at a backward
        // jump only if the next instruction does not set up a `try`, so
        // there a `while True: try: ...` loop can never be interrupted, nor
        // let another thread run, under pyreload or plain `python3.10`.
        "def forever(obj):\n    while True:\n        obj.n += 0\n        try:\n            obj.n += 0\n        except Exception:\n            pass\n\ndef never_true():\n    while True:\n        pass\n",
    );
    sandbox.write(
        "main.py",
        &format!("import sys, time, threading\nimport calc, mig\n{PROBE_LOOP}"),
    );
    probe(sandbox, &["--version", "1", "main.py"])
}

#[test]
fn code_that_never_returns_is_interrupted_at_its_deadline_and_changes_nothing() {
    let sandbox = Sandbox::new();
    let mut p = looping_program(&sandbox);
    let modules = (p.ask("__import__('pyreload').version()"), p.module_state()).1;
    let cases = [
        (
            "a transformer",
            "[[reload]]\nmodule = \"calc\"\n\n[[transform]]\nclass = \"calc.Item\"\nfunction = \"mig.forever\"\n\n[safe_point]\ncommit_timeout_ms = 300\n",
            "rolled_back",
            "ran past commit_timeout_ms (300 ms) and was interrupted",
        ),
        (
            "a module body",
            "[[reload]]\nmodule = \"calc\"\nsource = \"calc_loop.py\"\n\n[safe_point]\ncommit_timeout_ms = 300\n",
            "refused",
            "ran past commit_timeout_ms (300 ms) and was interrupted",
        ),
        (
            "[check] after",
            "[[reload]]\nmodule = \"calc\"\n\n[safe_point]\ncommit_timeout_ms = 300\n\n[check]\nafter = \"mig.never_true()\"\n",
            "rolled_back",
            "ran past commit_timeout_ms (300 ms) and was interrupted",
        ),
        (
            "a safe-point condition",
            "[[reload]]\nmodule = \"calc\"\n\n[safe_point]\ncondition = \"mig.never_true()\"\ntimeout_ms = 300\n",
            "refused",
            "ran past the safe-point wait's timeout_ms (300 ms) and was interrupted",
        ),
    ];
    sandbox.write("calc_loop.py", "while True:\n    pass\n");
    for (i, (what, body, outcome, message)) in cases.iter().enumerate() {
        let spec = sandbox.write(
            &format!("loop{i}.toml"),
            &format!("[update]\nname = \"loop-{i}\"\nfrom = \"1\"\nto = \"2\"\n\n{body}"),
        );
        let (code, report) = sandbox.apply_json(&p, &spec);
        assert_eq!(code, 1, "{what}: {report:#}");
        assert_eq!(report["outcome"], *outcome, "{what}: {report:#}");
        let text = report["problem"]["message"].as_str().unwrap_or_default();
        assert!(text.contains(message), "{what}: {text}");
        assert!(text.contains("UpdateTimeout"), "{what}: {text}");
        assert_eq!(
            p.ask("calc.total(), __import__('pyreload').version()"),
            "(499500, '1')",
            "{what}"
        );
        assert_eq!(p.ask("sorted(vars(calc.ITEMS[0]))"), "['n']", "{what}");
        p.module_state().assert_same(&modules, what);
    }
    // The interruption left nothing pending, and the program's own switch
    // interval in place: the program and later updates go on.
    assert_eq!(p.ask("sum(range(10))"), "45");
    assert_eq!(p.ask("sys.getswitchinterval()"), "0.005");
    let ok = sandbox.write(
        "ok.toml",
        "[update]\nname = \"ok\"\nfrom = \"1\"\nto = \"2\"\n\n[[reload]]\nmodule = \"calc\"\n",
    );
    let (code, report) = sandbox.apply_json(&p, &ok);
    assert_eq!(code, 0, "{report:#}");
}

#[test]
fn the_program_exiting_while_an_update_waits_gives_a_clear_error() {
    let mut shop = Shop::start();
    let apply = shop.apply_waiting();
    // The program's main thread ends, with its own exit status.
    let stdin = shop.program.stdin.as_mut().unwrap();
    writeln!(stdin, "sys.exit(3)").unwrap();
    stdin.flush().unwrap();
    let out = apply.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("the program began to exit while the update was in progress; nothing was changed"),
        "{stderr}"
    );
    let status = shop.program.wait(Duration::from_secs(60));
    assert_eq!(status.code(), Some(3), "{}", shop.program.logs());
    assert!(!shop.socket.exists(), "socket left behind");
}

#[test]
fn a_program_killed_while_an_update_waits_is_reported_as_gone() {
    let mut shop = Shop::start();
    let apply = shop.apply_waiting();
    shop.program.signal(nix::sys::signal::Signal::SIGKILL);
    let out = apply.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "`shop` (pid {}) exited before it answered",
            shop.program.pid()
        )),
        "{stderr}"
    );
}
