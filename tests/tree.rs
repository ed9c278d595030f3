//! A program with worker processes is updated whole, or not at all: every
//! member prepares and stages, then each commits at its own safe point; a
//! failure in any member's commit rolls back those that committed. `check`
//! and `rollback` reach every member too.
//!
//! The program here forks its workers itself, as gunicorn's master does.
//! Each worker answers expressions on its own TCP port (written to
//! `ports/<pid>`), so the test asks every process directly what it runs.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

use common::{wait_until, Hosted, Sandbox, PROBE_LOOP};

/// `app.py`'s first version; `work()` says which version runs.
const APP_V1: &str = "import os\nSTATE = {'hits': 0}\n\ndef work():\n    STATE['hits'] += 1\n    return 'v1'\n\ndef busy():\n    return False\n";
const APP_V2: &str = "import os\nSTATE = {'hits': 0}\n\ndef work():\n    STATE['hits'] += 1\n    return 'v2'\n\ndef busy():\n    return False\n";

/// The master: imports `app` (as with gunicorn --preload) unless told not
/// to, forks `WORKERS` workers that serve expressions over TCP, and
/// answers expressions itself on stdin. `spawn()` forks one more worker.
const MASTER: &str = r#"import os, sys, socket, threading
PRELOAD = os.environ.get("PRELOAD", "1") == "1"
EXIT_THROUGH_INTERPRETER = os.environ.get("WORKER_EXIT") == "interpreter"
if PRELOAD:
    import app

def serve_worker():
    global app
    import app  # a worker without preload imports the app after the fork
    if EXIT_THROUGH_INTERPRETER:
        # SIGUSR1 to the main thread ends the worker as a retiring server
        # worker ends: SystemExit, the interpreter's exit, its atexit hooks.
        import signal
        signal.signal(signal.SIGUSR1, lambda *_: sys.exit(0))
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    port = listener.getsockname()[1]
    tmp = f"ports/.{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(str(port))
    os.rename(tmp, f"ports/{os.getpid()}")
    def handle(conn):
        with conn, conn.makefile("rw") as f:
            for line in f:
                try:
                    result = repr(eval(line, globals()))
                except Exception as e:
                    result = f"raised {type(e).__name__}: {e}"
                f.write(result + "\n")
                f.flush()
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=handle, args=(conn,), daemon=True).start()

children = []

def spawn():
    pid = os.fork()
    if pid == 0:
        try:
            serve_worker()
        finally:
            if not EXIT_THROUGH_INTERPRETER:
                os._exit(0)
    children.append(pid)
    return pid

os.makedirs("ports", exist_ok=True)
for _ in range(int(os.environ.get("WORKERS", "2"))):
    spawn()
"#;

/// [`SPEC`] with `timeout_ms`, and a condition false in worker `pid`
/// (unless `unless` holds).
fn spec_stuck_in(pid: u32, timeout_ms: u64, unless: Option<&str>) -> String {
    let unless = unless.map(|u| format!(" or {u}")).unwrap_or_default();
    SPEC.replace(
        "timeout_ms = 20000",
        &format!("timeout_ms = {timeout_ms}\ncondition = \"__import__('os').getpid() != {pid}{unless}\""),
    )
}

/// The spec that reloads `app` in place.
const SPEC: &str =
    "[update]\nname = \"app-v2\"\nto = \"2\"\n\n[[reload]]\nmodule = \"app\"\n\n[safe_point]\ntimeout_ms = 20000\n";

struct Tree {
    master: Hosted,
}

impl Tree {
    fn start(sandbox: &Sandbox, workers: usize, preload: bool) -> Tree {
        Tree::start_with(sandbox, workers, preload, APP_V1)
    }

    /// [`Tree::start`] with `app` first as `app_v1`.
    fn start_with(sandbox: &Sandbox, workers: usize, preload: bool, app_v1: &str) -> Tree {
        Tree::start_with_env(sandbox, workers, preload, app_v1, Vec::new())
    }

    /// [`Tree::start_with`], with more variables in the program's
    /// environment.
    fn start_with_env(
        sandbox: &Sandbox,
        workers: usize,
        preload: bool,
        app_v1: &str,
        env: Vec<(&str, String)>,
    ) -> Tree {
        sandbox.write("app.py", app_v1);
        sandbox.write("master.py", &format!("{MASTER}{PROBE_LOOP}"));
        let mut env = env;
        env.push(("WORKERS", workers.to_string()));
        env.push(("PRELOAD", if preload { "1" } else { "0" }.to_string()));
        let master = common::probe_with_env(sandbox, &["--version", "1", "master.py"], env);
        let tree = Tree { master };
        tree.wait_for_workers(sandbox, workers);
        tree
    }

    /// Waits until `n` workers serve and are members of the tree.
    fn wait_for_workers(&self, sandbox: &Sandbox, n: usize) {
        let socket = self.master.socket();
        wait_until(
            Duration::from_secs(60),
            || worker_ports(sandbox).len() >= n && members(&socket).len() >= n,
            || format!("{n} workers never came up: {:?}", common::status(&socket)),
        );
    }
}

/// pid → port of every worker that has written its port file.
fn worker_ports(sandbox: &Sandbox) -> Vec<(u32, u16)> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(sandbox.path().join("ports")) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let (Ok(pid), Ok(port)) = (name.parse(), std::fs::read_to_string(e.path())) {
                if let Ok(port) = port.trim().parse() {
                    out.push((pid, port));
                }
            }
        }
    }
    out.sort();
    out
}

/// Asks a worker to evaluate `line`.
fn ask_worker(port: u16, line: &str) -> String {
    let stream = TcpStream::connect(("127.0.0.1", port)).expect("worker answers");
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut writer = stream.try_clone().unwrap();
    writeln!(writer, "{line}").unwrap();
    let mut answer = String::new();
    BufReader::new(stream).read_line(&mut answer).unwrap();
    answer.trim_end().to_string()
}

/// What every worker's `app.work()` returns, by pid.
fn versions(sandbox: &Sandbox) -> Vec<(u32, String)> {
    worker_ports(sandbox)
        .into_iter()
        .map(|(pid, port)| (pid, ask_worker(port, "app.work()")))
        .collect()
}

/// The members the root's `status --json` lists (the root's `members`).
fn members(socket: &Path) -> Vec<serde_json::Value> {
    common::status(socket)["members"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn apply(sandbox: &Sandbox, tree: &Tree, spec: &str) -> (i32, serde_json::Value) {
    let path = sandbox.write("up.toml", spec);
    sandbox.apply_json(&tree.master, &path)
}

fn member_outcomes(report: &serde_json::Value) -> Vec<(u64, String)> {
    report["members"]
        .as_array()
        .unwrap_or_else(|| panic!("no members in {report:#}"))
        .iter()
        .map(|m| (m["pid"].as_u64().unwrap(), m["outcome"].as_str().unwrap().to_string()))
        .collect()
}

/// A 3-worker tree's update committed in all four members (`mode`: the
/// report's `tree_commit`), and each answers with v2.
fn assert_every_member_at_v2(sandbox: &Sandbox, tree: &mut Tree, code: i32, report: &serde_json::Value, mode: &str) {
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(report["outcome"], "committed", "{report:#}");
    let outcomes = member_outcomes(report);
    assert_eq!(outcomes.len(), 4, "{report:#}");
    assert!(outcomes.iter().all(|(_, o)| o == "committed"), "{report:#}");
    assert!(report["skew_ms"].as_f64().is_some(), "{report:#}");
    assert_eq!(report["tree_commit"], mode, "{report:#}");
    // Each member waited for the bell at real-time priority where this
    // machine lets a process ask for it (`[tree] realtime`, default true).
    let permitted = realtime_permitted();
    for m in report["members"].as_array().unwrap() {
        assert_eq!(m["bell"] == "realtime", permitted, "{report:#}");
    }
    // Each says where its time after the bell went: it woke, then held
    // the GIL, then let its threads go; the skew is within the last.
    let after_bell: Vec<[f64; 3]> = report["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let ms = |key: &str| m[key].as_f64().unwrap_or_else(|| panic!("no {key} in {m:#}"));
            [ms("woke_after_bell_ms"), ms("gil_after_bell_ms"), ms("after_bell_ms")]
        })
        .collect();
    for [woke, gil, released] in &after_bell {
        assert!(woke <= gil && gil <= released, "{report:#}");
    }
    let slowest = after_bell.iter().map(|a| a[2]).fold(0.0, f64::max);
    assert!(report["skew_ms"].as_f64().unwrap() <= slowest, "{report:#}");
    assert_eq!(tree.master.ask("app.work()"), "'v2'");
    for (pid, v) in versions(sandbox) {
        assert_eq!(v, "'v2'", "worker {pid}");
    }
}

/// Whether a process here may ask for `SCHED_FIFO`, as a member does.
fn realtime_permitted() -> bool {
    std::process::Command::new("python3")
        .args([
            "-c",
            "import os; os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))",
        ])
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn every_worker_and_the_master_take_the_update_together() {
    let sandbox = Sandbox::new();
    let mut tree = Tree::start(&sandbox, 3, true);
    assert!(versions(&sandbox).iter().all(|(_, v)| v == "'v1'"));
    assert_eq!(tree.master.ask("app.work()"), "'v1'");
    // Live state in every process survives.
    for (_, port) in worker_ports(&sandbox) {
        ask_worker(port, "app.work()");
    }

    sandbox.write("app.py", APP_V2);
    let (code, report) = apply(&sandbox, &tree, SPEC);
    assert_every_member_at_v2(&sandbox, &mut tree, code, &report, "each");
    for (pid, port) in worker_ports(&sandbox) {
        // 1 before the update, 1 by `versions`, 1 more now: kept.
        assert_eq!(ask_worker(port, "app.STATE['hits']"), "3", "worker {pid}");
    }
    // `status` shows every member at the new version.
    for m in members(&tree.master.socket()) {
        assert_eq!(m["version"], "2", "{m:#}");
    }

    // A worker forked after the update is born new.
    let newborn = tree.master.ask("spawn()");
    tree.wait_for_workers(&sandbox, 4);
    let port = worker_ports(&sandbox)
        .into_iter()
        .find(|(pid, _)| pid.to_string() == newborn)
        .expect("the new worker's port")
        .1;
    assert_eq!(ask_worker(port, "app.work()"), "'v2'");
}

#[test]
fn workers_that_import_the_app_themselves_are_updated_and_the_master_is_unaffected() {
    let sandbox = Sandbox::new();
    let mut tree = Tree::start(&sandbox, 2, false);
    assert_eq!(tree.master.ask("'app' in sys.modules"), "False");
    sandbox.write("app.py", APP_V2);
    let (code, report) = apply(&sandbox, &tree, SPEC);
    assert_eq!(code, 0, "{report:#}");
    let outcomes = member_outcomes(&report);
    let root = tree.master.pid() as u64;
    assert!(outcomes.contains(&(root, "unaffected".to_string())), "{report:#}");
    assert_eq!(
        outcomes.iter().filter(|(_, o)| o == "committed").count(),
        2,
        "{report:#}"
    );
    for (pid, v) in versions(&sandbox) {
        assert_eq!(v, "'v2'", "worker {pid}");
    }
    // The master did not import the app for the update.
    assert_eq!(tree.master.ask("'app' in sys.modules"), "False");
    assert_eq!(tree.master.ask("__import__('pyreload').version()"), "'2'");
}

#[test]
fn a_check_that_fails_in_one_worker_undoes_every_member() {
    let sandbox = Sandbox::new();
    let mut tree = Tree::start(&sandbox, 3, true);
    let (victim, _) = worker_ports(&sandbox)[1];
    sandbox.write("app.py", APP_V2);
    let spec = format!("{SPEC}\n[check]\nafter = \"__import__('os').getpid() != {victim}\"\n");
    let (code, report) = apply(&sandbox, &tree, &spec);
    assert_eq!(code, 1, "{report:#}");
    assert_eq!(report["outcome"], "rolled_back", "{report:#}");
    let message = report["problem"]["message"].as_str().unwrap();
    assert!(message.contains(&format!("pid {victim}")), "{message}");
    assert!(
        member_outcomes(&report).iter().all(|(_, o)| o == "rolled_back"),
        "{report:#}"
    );
    // Nobody runs v2, in any process.
    assert_eq!(tree.master.ask("app.work()"), "'v1'");
    for (pid, v) in versions(&sandbox) {
        assert_eq!(v, "'v1'", "worker {pid}");
    }
    assert_eq!(tree.master.ask("__import__('pyreload').version()"), "'1'");
}

#[test]
fn a_worker_whose_condition_stays_false_refuses_for_the_whole_tree() {
    let sandbox = Sandbox::new();
    let mut tree = Tree::start(&sandbox, 2, true);
    let (stuck, _) = worker_ports(&sandbox)[0];
    sandbox.write("app.py", APP_V2);
    let spec = spec_stuck_in(stuck, 1500, None);
    let (code, report) = apply(&sandbox, &tree, &spec);
    assert_eq!(code, 1, "{report:#}");
    assert_eq!(report["outcome"], "refused", "{report:#}");
    let message = report["problem"]["message"].as_str().unwrap();
    assert!(message.contains(&format!("pid {stuck}")), "{message}");
    assert!(message.contains("condition"), "{message}");
    assert_eq!(tree.master.ask("app.work()"), "'v1'");
    for (pid, v) in versions(&sandbox) {
        assert_eq!(v, "'v1'", "worker {pid}");
    }
}

#[test]
fn a_module_no_member_loads_is_refused_naming_the_members_asked() {
    let sandbox = Sandbox::new();
    let tree = Tree::start(&sandbox, 1, true);
    let spec = SPEC.replace("module = \"app\"", "module = \"nothere\"");
    let (code, report) = apply(&sandbox, &tree, &spec);
    assert_eq!(code, 1, "{report:#}");
    let message = report["problem"]["message"].as_str().unwrap();
    assert!(message.contains("`nothere` is not loaded in any process"), "{message}");
    let help = report["problem"]["help"].as_str().unwrap();
    assert!(help.contains(&tree.master.pid().to_string()), "{help}");
}

#[test]
fn a_source_spec_is_refused_when_a_member_could_import_the_old_file() {
    let sandbox = Sandbox::new();
    let tree = Tree::start(&sandbox, 1, false);
    sandbox.write("new/app.py", APP_V2);
    let spec = SPEC.replace("module = \"app\"", "module = \"app\"\nsource = \"new/app.py\"");
    let (code, report) = apply(&sandbox, &tree, &spec);
    assert_eq!(code, 1, "{report:#}");
    let message = report["problem"]["message"].as_str().unwrap();
    assert!(message.contains("would import the old file"), "{message}");
    for (pid, v) in versions(&sandbox) {
        assert_eq!(v, "'v1'", "worker {pid}");
    }
}

#[test]
fn while_a_worker_waits_apply_shows_the_round_and_what_it_waits_for() {
    let sandbox = Sandbox::new();
    let tree = Tree::start(&sandbox, 2, true);
    let (stuck, _) = worker_ports(&sandbox)[0];
    sandbox.write("app.py", APP_V2);
    let spec = spec_stuck_in(stuck, 60000, Some("__import__('os').path.exists('go')"));
    // Not on a terminal: a plain line each time something changed, on
    // stderr; the report on stdout as ever.
    let mut apply = apply_in_background(&sandbox, &tree, &spec, false);
    let mut stderr = BufReader::new(apply.stderr.take().unwrap());
    let mut seen = Vec::new();
    let waiting = format!("  pid {stuck} (");
    loop {
        let mut line = String::new();
        assert!(stderr.read_line(&mut line).unwrap() > 0, "apply ended first: {seen:#?}");
        seen.push(line.trim_end().to_string());
        if line.starts_with(&waiting) {
            break;
        }
    }
    assert!(
        seen.iter()
            .any(|l| l.starts_with("pyreload: `app-v2`: stage: ") && l.ends_with(" members ready")),
        "{seen:#?}"
    );
    let waited = seen.last().unwrap();
    assert!(
        waited.contains("the condition") && waited.contains("is false"),
        "{waited}"
    );
    sandbox.write("go", "");
    let out = apply.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.starts_with("Applied `app-v2`"), "{stdout}");
    assert!(stdout.contains("members: 3 (3 updated)"), "{stdout}");
    for (pid, v) in versions(&sandbox) {
        assert_eq!(v, "'v2'", "worker {pid}");
    }
}

/// Runs `pyreload <args> --json --socket <master>` and returns its exit
/// code and report.
fn run_json(sandbox: &Sandbox, tree: &Tree, args: &[&str]) -> (i32, serde_json::Value) {
    let socket = tree.master.socket();
    let mut all = args.to_vec();
    all.extend(["--json", "--socket", socket.to_str().unwrap()]);
    let out = sandbox.run(&all);
    let report = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("no JSON report ({e}):\n{}", sandbox.transcript()));
    (out.status.code().unwrap(), report)
}

/// Every process's `pyreload.version()`, the master first.
fn tree_versions(sandbox: &Sandbox, tree: &mut Tree) -> Vec<String> {
    let mut out = vec![tree.master.ask("__import__('pyreload').version()")];
    for (_, port) in worker_ports(sandbox) {
        out.push(ask_worker(port, "__import__('pyreload').version()"));
    }
    out
}

#[test]
fn rollback_of_a_tree_undoes_the_update_in_every_member() {
    let sandbox = Sandbox::new();
    let mut tree = Tree::start(&sandbox, 2, true);
    tree.master.ask("app.STATE.update(hits=41)");
    sandbox.write("app.py", APP_V2);
    let (code, report) = apply(&sandbox, &tree, SPEC);
    assert_eq!(code, 0, "{report:#}");
    // `--check` asks every member, and changes none.
    let (code, report) = run_json(&sandbox, &tree, &["rollback", "--check"]);
    assert_eq!(code, 0, "{report:#}\n{}", sandbox.transcript());
    assert_eq!(report["outcome"], "checked", "{report:#}");
    let outcomes = member_outcomes(&report);
    assert_eq!(outcomes.len(), 3, "{report:#}");
    assert!(outcomes.iter().all(|(_, o)| o == "checked"), "{report:#}");
    assert_eq!(tree_versions(&sandbox, &mut tree), ["'2'", "'2'", "'2'"]);
    let (code, report) = run_json(&sandbox, &tree, &["rollback"]);
    assert_eq!(code, 0, "{report:#}\n{}", sandbox.transcript());
    assert_eq!(report["outcome"], "committed", "{report:#}");
    assert_eq!(report["update"], "rollback of app-v2", "{report:#}");
    let outcomes = member_outcomes(&report);
    assert_eq!(outcomes.len(), 3, "{report:#}");
    assert!(outcomes.iter().all(|(_, o)| o == "committed"), "{report:#}");
    // Every process runs v1 again, with its data.
    assert_eq!(tree.master.ask("app.work()"), "'v1'");
    assert_eq!(tree.master.ask("app.STATE['hits']"), "42");
    for (pid, v) in versions(&sandbox) {
        assert_eq!(v, "'v1'", "worker {pid}");
    }
    assert_eq!(tree_versions(&sandbox, &mut tree), ["'1'", "'1'", "'1'"]);
    // Nothing is left to roll back tree-wide: refused, nothing changed.
    let (code, report) = run_json(&sandbox, &tree, &["rollback"]);
    assert_eq!(code, 1, "{report:#}");
    assert_eq!(tree.master.ask("app.work()"), "'v1'");
}

#[test]
fn a_tree_rollback_is_refused_when_a_worker_born_since_has_nothing_to_undo() {
    let sandbox = Sandbox::new();
    let mut tree = Tree::start(&sandbox, 2, false);
    sandbox.write("app.py", APP_V2);
    let (code, report) = apply(&sandbox, &tree, SPEC);
    assert_eq!(code, 0, "{report:#}");
    // A worker forked now imports the new file from disk: no journal.
    let newborn: u32 = tree.master.ask("spawn()").parse().unwrap();
    tree.wait_for_workers(&sandbox, 3);
    let (code, report) = run_json(&sandbox, &tree, &["rollback"]);
    assert_eq!(code, 1, "{report:#}");
    let message = report["problem"]["message"].as_str().unwrap();
    assert!(message.contains(&format!("pid {newborn}")), "{message}");
    assert!(message.contains("started after the update"), "{message}");
    // No member changed.
    for (pid, v) in versions(&sandbox) {
        assert_eq!(v, "'v2'", "worker {pid}");
    }
    // `rollback --check` says the same, naming it, and changes nothing either.
    let (code, report) = run_json(&sandbox, &tree, &["rollback", "--check"]);
    assert_eq!(code, 1, "{report:#}");
    let message = report["problem"]["message"].as_str().unwrap();
    assert!(message.contains(&format!("pid {newborn}")), "{message}");
    for (pid, v) in versions(&sandbox) {
        assert_eq!(v, "'v2'", "worker {pid}");
    }
}

#[test]
fn check_asks_every_member_and_changes_none() {
    let sandbox = Sandbox::new();
    let mut tree = Tree::start(&sandbox, 2, false);
    sandbox.write("app.py", APP_V2);
    let path = sandbox.write("up.toml", SPEC);
    // The master does not load `app`; its workers do, and are asked.
    let (code, report) = run_json(&sandbox, &tree, &["check", path.to_str().unwrap()]);
    assert_eq!(code, 0, "{report:#}\n{}", sandbox.transcript());
    assert_eq!(report["outcome"], "checked", "{report:#}");
    let outcomes = member_outcomes(&report);
    let master = tree.master.pid();
    for (pid, outcome) in &outcomes {
        let want = if *pid == master as u64 { "unaffected" } else { "checked" };
        assert_eq!(outcome, want, "pid {pid}: {report:#}");
    }
    assert_eq!(outcomes.len(), 3, "{report:#}");
    assert!(
        report["modules"].as_array().is_some_and(|m| !m.is_empty()),
        "the workers' predictions are in the report: {report:#}"
    );
    for (pid, v) in versions(&sandbox) {
        assert_eq!(v, "'v1'", "worker {pid}");
    }
    assert_eq!(tree_versions(&sandbox, &mut tree), ["'1'", "'1'", "'1'"]);
}

#[test]
fn a_program_that_never_forked_is_updated_alone() {
    let sandbox = Sandbox::new();
    sandbox.write("app.py", APP_V1);
    sandbox.write("solo.py", &format!("import sys, app\n{PROBE_LOOP}"));
    let mut p = common::probe(&sandbox, &["--version", "1", "solo.py"]);
    sandbox.write("app.py", APP_V2);
    let path = sandbox.write("up.toml", SPEC);
    let (code, report) = sandbox.apply_json(&p, &path);
    assert_eq!(code, 0, "{report:#}");
    // No tree round trips: no member list, no skew.
    assert!(report.get("members").is_none(), "{report:#}");
    assert!(report.get("skew_ms").is_none(), "{report:#}");
    assert_eq!(p.ask("app.work()"), "'v2'");
}

/// `pyreload prepare --json` on the tree's root: the exit status and JSON.
fn prepare(sandbox: &Sandbox, tree: &Tree, lease: &str) -> (i32, serde_json::Value) {
    let path = sandbox.write("up.toml", SPEC);
    let socket = tree.master.socket();
    let out = sandbox.run(&[
        "prepare",
        "--json",
        "--lease",
        lease,
        "--socket",
        socket.to_str().unwrap(),
        path.to_str().unwrap(),
    ]);
    let json = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("prepare printed no JSON ({e}):\n{}", sandbox.transcript()));
    (out.status.code().unwrap_or(-1), json)
}

#[test]
fn a_tree_prepared_serves_the_old_version_in_every_member_until_its_commit() {
    let sandbox = Sandbox::new();
    let mut tree = Tree::start(&sandbox, 2, true);
    sandbox.write("app.py", APP_V2);
    let (code, prepared) = prepare(&sandbox, &tree, "60s");
    assert_eq!(code, 0, "{prepared:#}\n{}", sandbox.transcript());
    let id = prepared["id"].as_str().unwrap().to_string();
    assert!(
        prepared["report"]["warnings"]
            .to_string()
            .contains("staged in 3 member(s)"),
        "{prepared:#}"
    );
    // Held: every process runs the old version, and the root says so.
    assert_eq!(tree.master.ask("app.work()"), "'v1'");
    assert!(versions(&sandbox).iter().all(|(_, v)| v == "'v1'"));
    assert_eq!(common::status(&tree.master.socket())["prepared"]["id"], id.as_str());
    let (busy, _) = apply(&sandbox, &tree, SPEC);
    assert_eq!(busy, 1, "an apply is busy while the tree is prepared");
    // A worker asked directly refuses: it would be prepared alone.
    let worker = members(&tree.master.socket())[0]["socket"]
        .as_str()
        .unwrap()
        .to_string();
    let alone = sandbox.run(&[
        "prepare",
        "--socket",
        &worker,
        sandbox.path().join("up.toml").to_str().unwrap(),
    ]);
    assert_eq!(alone.status.code(), Some(1));
    assert!(
        common::unwrapped(&common::stderr(&alone)).contains("is a worker process of the program"),
        "{}",
        common::stderr(&alone)
    );

    let commit = sandbox.run(&["commit", "--json", &id]);
    assert_eq!(commit.status.code(), Some(0), "{}", sandbox.transcript());
    let report: serde_json::Value = serde_json::from_slice(&commit.stdout).unwrap();
    assert_eq!(report["outcome"], "committed", "{report:#}");
    let outcomes = member_outcomes(&report);
    assert_eq!(outcomes.len(), 3, "{report:#}");
    assert!(outcomes.iter().all(|(_, o)| o == "committed"), "{report:#}");
    assert_eq!(tree.master.ask("app.work()"), "'v2'");
    for (pid, v) in versions(&sandbox) {
        assert_eq!(v, "'v2'", "worker {pid}");
    }
    let again = sandbox.run(&["commit", &id]);
    assert_eq!(again.status.code(), Some(0), "a second commit answers the same");
}

#[test]
fn a_tree_prepared_and_aborted_or_expired_changes_no_member() {
    let sandbox = Sandbox::new();
    let mut tree = Tree::start(&sandbox, 2, true);
    sandbox.write("app.py", APP_V2);
    let (code, prepared) = prepare(&sandbox, &tree, "60s");
    assert_eq!(code, 0, "{prepared:#}");
    let id = prepared["id"].as_str().unwrap().to_string();
    let abort = sandbox.run(&["abort", &id]);
    assert_eq!(abort.status.code(), Some(0), "{}", sandbox.transcript());
    assert_eq!(tree.master.ask("app.work()"), "'v1'");
    assert!(versions(&sandbox).iter().all(|(_, v)| v == "'v1'"));

    let (code, prepared) = prepare(&sandbox, &tree, "500ms");
    assert_eq!(code, 0, "{prepared:#}");
    let id = prepared["id"].as_str().unwrap().to_string();
    common::eventually(Duration::from_secs(30), || {
        let now = common::status(&tree.master.socket());
        match now.get("prepared") {
            None => Ok(()),
            Some(_) => Err(format!("still prepared: {now:#}")),
        }
    });
    let commit = sandbox.run(&["commit", &id]);
    assert_eq!(commit.status.code(), Some(1));
    assert!(
        common::unwrapped(&common::stderr(&commit)).contains("expired"),
        "{}",
        sandbox.transcript()
    );
    assert_eq!(tree.master.ask("app.work()"), "'v1'");
    assert!(versions(&sandbox).iter().all(|(_, v)| v == "'v1'"));
    // Every member is free again (each lets its update go just after it
    // answers the abort): an apply goes through the whole tree.
    common::eventually(Duration::from_secs(30), || match apply(&sandbox, &tree, SPEC) {
        (0, _) => Ok(()),
        (_, report) => Err(format!("{report:#}")),
    });
    assert!(versions(&sandbox).iter().all(|(_, v)| v == "'v2'"));
}

/// `app` for the `together` tests: `keep_calling()` starts a thread that
/// calls `work()` every millisecond, and v2's `work()` leaves a file
/// `ran-v2-<pid>` the first time it runs, so a test sees whether any
/// thread of any process ever ran the new version. `allowed()` is true
/// at its first call only (the stage's look at the safe point), false
/// from its second (the commit's).
const CALLING_V1: &str = "import os, threading, time\nSTATE = {'hits': 0}\nCHECKS = [0]\n\ndef work():\n    STATE['hits'] += 1\n    return 'v1'\n\ndef busy():\n    return False\n\ndef allowed():\n    CHECKS[0] += 1\n    return CHECKS[0] < 2\n\ndef keep_calling():\n    def loop():\n        while True:\n            work()\n            time.sleep(0.001)\n    threading.Thread(target=loop, daemon=True).start()\n";
const CALLING_V2: &str = "import os, threading, time\nSTATE = {'hits': 0}\nCHECKS = [0]\n\ndef work():\n    STATE['hits'] += 1\n    if not os.path.exists(f'ran-v2-{os.getpid()}'):\n        open(f'ran-v2-{os.getpid()}', 'w').close()\n    return 'v2'\n\ndef busy():\n    return False\n\ndef allowed():\n    CHECKS[0] += 1\n    return CHECKS[0] < 2\n\ndef keep_calling():\n    def loop():\n        while True:\n            work()\n            time.sleep(0.001)\n    threading.Thread(target=loop, daemon=True).start()\n";

/// `SPEC` committing `together`, with `extra` lines in `[safe_point]`
/// and `tail` after.
fn together_spec(extra: &str, tail: &str) -> String {
    SPEC.replace("timeout_ms = 20000", &format!("timeout_ms = 20000\n{extra}"))
        + "\n[tree]\ncommit = \"together\"\n"
        + tail
}

/// A tree whose every process calls `app.work()` all the time.
fn calling_tree(sandbox: &Sandbox, workers: usize) -> Tree {
    let mut tree = Tree::start_with(sandbox, workers, true, CALLING_V1);
    assert_eq!(tree.master.ask("app.keep_calling()"), "None");
    for (_, port) in worker_ports(sandbox) {
        assert_eq!(ask_worker(port, "app.keep_calling()"), "None");
    }
    sandbox.write("app.py", CALLING_V2);
    tree
}

/// The pids whose threads ran v2's `work()`.
fn ran_v2(sandbox: &Sandbox) -> Vec<String> {
    let mut ran: Vec<String> = std::fs::read_dir(sandbox.path())
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.strip_prefix("ran-v2-").map(str::to_string))
        .collect();
    ran.sort();
    ran
}

#[test]
fn together_every_member_stops_and_merges_then_all_let_go_on_the_new_version() {
    let sandbox = Sandbox::new();
    let mut tree = calling_tree(&sandbox, 3);
    let (code, report) = apply(&sandbox, &tree, &together_spec("", ""));
    assert_every_member_at_v2(&sandbox, &mut tree, code, &report, "together");
    for m in members(&tree.master.socket()) {
        assert_eq!(m["version"], "2", "{m:#}");
    }
    // Every process's own thread runs the new version now.
    let mut pids: Vec<String> = worker_ports(&sandbox).iter().map(|(pid, _)| pid.to_string()).collect();
    pids.push(tree.master.pid().to_string());
    pids.sort();
    wait_until(
        Duration::from_secs(30),
        || ran_v2(&sandbox) == pids,
        || format!("ran v2: {:?}, members {pids:?}", ran_v2(&sandbox)),
    );
}

#[test]
fn with_realtime_false_no_member_waits_for_the_bell_at_real_time_priority() {
    let sandbox = Sandbox::new();
    let mut tree = calling_tree(&sandbox, 2);
    let (code, report) = apply(&sandbox, &tree, &together_spec("", "realtime = false\n"));
    assert_eq!(code, 0, "{report:#}");
    let members = report["members"].as_array().unwrap();
    assert_eq!(members.len(), 3, "{report:#}");
    for m in members {
        assert_eq!(m["outcome"], "committed", "{report:#}");
        assert_ne!(m["bell"], "realtime", "{report:#}");
    }
    assert_eq!(tree.master.ask("app.work()"), "'v2'");
}

/// Imported by a worker: `start()` runs a thread that waits for a first
/// byte on the FIFO `hold` (without the GIL, so that the worker answers
/// meanwhile), makes `hogging`, then holds the GIL in a C call (ctypes'
/// `PyDLL` keeps it) until a second byte comes.
const HOG: &str = r#"import ctypes, os, threading

def _hog(fd):
    buf = ctypes.create_string_buffer(1)
    libc = ctypes.PyDLL(None)
    os.read(fd, 1)
    open("hogging", "w").close()
    libc.read(fd, buf, 1)

def start():
    os.mkfifo("hold")
    fd = os.open("hold", os.O_RDWR)
    threading.Thread(target=_hog, args=(fd,), daemon=True).start()
"#;

/// A worker thread inside a long call that keeps the GIL when the bell
/// rings keeps that worker's commit waiting, and without a bound its
/// threads, raised to real-time priority to hand the GIL over, would run
/// that whole call ahead of every ordinary process: the boost ends at its
/// cap (20 ms), the member commits once the call returns, and its report
/// says both.
#[test]
fn a_worker_holding_the_gil_in_a_long_call_at_the_bell_keeps_its_boost_for_the_cap_only() {
    let sandbox = Sandbox::new();
    sandbox.write("hog.py", HOG);
    let mut tree = Tree::start(&sandbox, 1, true);
    sandbox.write("app.py", APP_V2);
    let (code, prepared) = prepare(&sandbox, &tree, "60s");
    assert_eq!(code, 0, "{prepared:#}\n{}", sandbox.transcript());
    let id = prepared["id"].as_str().unwrap().to_string();
    let (worker, port) = worker_ports(&sandbox)[0];
    assert_eq!(ask_worker(port, "__import__('hog').start()"), "None");
    let poke = || {
        std::fs::OpenOptions::new()
            .write(true)
            .open(sandbox.path().join("hold"))
            .and_then(|mut hold| hold.write_all(b"x"))
            .unwrap()
    };
    poke();
    wait_until(
        Duration::from_secs(30),
        || sandbox.path().join("hogging").exists(),
        || "the worker's thread never began its call".to_string(),
    );
    let commit = sandbox
        .pyreload()
        .args(["commit", "--json", &id])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The master commits on its own at the bell; the worker cannot until
    // the call returns. Well past the cap, it does.
    wait_until(
        Duration::from_secs(30),
        || tree.master.ask("app.work()") == "'v2'",
        || "the master never committed".to_string(),
    );
    std::thread::sleep(Duration::from_millis(500));
    poke();
    let (code, report) = finished(commit);
    assert_eq!(code, 0, "{report:#}\n{}", sandbox.transcript());
    let member = report["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["pid"] == worker)
        .unwrap_or_else(|| panic!("worker {worker} not in {report:#}"))
        .clone();
    assert_eq!(member["outcome"], "committed", "{report:#}");
    let gil = member["gil_after_bell_ms"].as_f64().unwrap();
    assert!(gil >= 500.0, "the worker waited for the call to return: {report:#}");
    let capped = if realtime_permitted() { 1 } else { 0 };
    assert_eq!(member["gil_boost_capped"].as_u64().unwrap_or(0), capped, "{report:#}");
    assert_eq!(ask_worker(port, "app.work()"), "'v2'");
}

#[test]
fn together_a_check_that_fails_in_one_worker_undoes_every_merge_before_any_thread_runs_it() {
    let sandbox = Sandbox::new();
    let mut tree = calling_tree(&sandbox, 3);
    let (victim, _) = worker_ports(&sandbox)[1];
    let tail = format!("\n[check]\nafter = \"__import__('os').getpid() != {victim}\"\n");
    let (code, report) = apply(&sandbox, &tree, &together_spec("", &tail));
    assert_eq!(code, 1, "{report:#}");
    let message = report["problem"]["message"].as_str().unwrap();
    assert!(message.contains(&format!("pid {victim}")), "{message}");
    assert!(message.contains("undid its merge"), "{message}");
    assert!(
        member_outcomes(&report).iter().all(|(_, o)| o == "rolled_back"),
        "{report:#}"
    );
    // The others had merged, stopped, and undid before letting go: no
    // thread anywhere ran the new version, though one calls it every ms.
    assert_eq!(ran_v2(&sandbox), Vec::<String>::new());
    assert_eq!(tree.master.ask("app.work()"), "'v1'");
    for (pid, v) in versions(&sandbox) {
        assert_eq!(v, "'v1'", "worker {pid}");
    }
    assert_eq!(tree.master.ask("__import__('pyreload').version()"), "'1'");
}

#[test]
fn together_a_worker_that_cannot_stop_within_hold_ms_leaves_every_member_as_it_was() {
    let sandbox = Sandbox::new();
    let mut tree = calling_tree(&sandbox, 2);
    let (stuck, _) = worker_ports(&sandbox)[0];
    // True in the stage, false at every commit attempt in `stuck`.
    let condition = format!("condition = \"__import__('os').getpid() != {stuck} or __import__('app').allowed()\"");
    let (code, report) = apply(&sandbox, &tree, &together_spec(&condition, "hold_ms = 200\n"));
    assert_eq!(code, 1, "{report:#}");
    let message = report["problem"]["message"].as_str().unwrap();
    assert!(message.contains(&format!("pid {stuck}")), "{message}");
    assert!(message.contains("hold_ms (200 ms)"), "{message}");
    for (pid, outcome) in member_outcomes(&report) {
        let want = if pid == stuck as u64 { "refused" } else { "rolled_back" };
        assert_eq!(outcome, want, "member {pid}: {report:#}");
    }
    assert_eq!(ran_v2(&sandbox), Vec::<String>::new());
    assert_eq!(tree.master.ask("app.work()"), "'v1'");
    for (pid, v) in versions(&sandbox) {
        assert_eq!(v, "'v1'", "worker {pid}");
    }
}

/// The root's `status --json` entry for member `pid`.
fn member_status(socket: &Path, pid: u32) -> serde_json::Value {
    members(socket)
        .into_iter()
        .find(|m| m["pid"] == pid)
        .unwrap_or_else(|| panic!("pid {pid} is not a member: {:#}", common::status(socket)))
}

/// A tree whose workers end through the interpreter's exit (as gunicorn's
/// do when `--max-requests` retires them), with the phase-hold knob.
fn exiting_tree(sandbox: &Sandbox, workers: usize) -> (Tree, common::PhaseHold) {
    let hold = common::PhaseHold::new(sandbox);
    let tree = Tree::start_with_env(
        sandbox,
        workers,
        true,
        APP_V1,
        vec![hold.env(), ("WORKER_EXIT", "interpreter".to_string())],
    );
    (tree, hold)
}

/// Makes worker `pid` begin to exit, and waits until it has: its exit
/// then waits for the update it takes part in.
fn retire(socket: &Path, pid: u32, port: u16) {
    ask_worker(
        port,
        "__import__('signal').pthread_kill(__import__('threading').main_thread().ident, __import__('signal').SIGUSR1)",
    );
    wait_until(
        Duration::from_secs(60),
        || member_status(socket, pid)["exiting"] == true,
        || format!("worker {pid} never began to exit: {:#}", member_status(socket, pid)),
    );
}

/// Spawns `pyreload apply [--json]` for `spec` in the background, its
/// stdout and stderr piped.
fn apply_in_background(sandbox: &Sandbox, tree: &Tree, spec: &str, json: bool) -> std::process::Child {
    let path = sandbox.write("up.toml", spec);
    let socket = tree.master.socket();
    let mut args = vec!["apply", "--socket", socket.to_str().unwrap(), path.to_str().unwrap()];
    if json {
        args.insert(1, "--json");
    }
    sandbox
        .pyreload()
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

fn finished(apply: std::process::Child) -> (i32, serde_json::Value) {
    let out = apply.wait_with_output().unwrap();
    let report = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "no JSON report ({e}):\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code().unwrap(), report)
}

/// A worker that begins to exit while the tree waits for its safe point
/// (a worker retired by `--max-requests`) is not a failure: it leaves the
/// update, which commits in every other member, and then it exits.
#[test]
fn a_worker_that_begins_to_exit_during_the_update_leaves_it_and_the_rest_commit() {
    let sandbox = Sandbox::new();
    let (tree, hold) = exiting_tree(&sandbox, 2);
    let socket = tree.master.socket();
    let (leaver, port) = worker_ports(&sandbox)[0];
    sandbox.write("app.py", APP_V2);
    hold.arm("wait");
    let apply = apply_in_background(&sandbox, &tree, SPEC, true);
    wait_until(
        Duration::from_secs(60),
        || {
            let ms = members(&socket);
            ms.len() == 2 && ms.iter().all(|m| m["in_progress"]["phase"] == "wait")
        },
        || format!("the workers never reached the wait: {:#}", common::status(&socket)),
    );
    retire(&socket, leaver, port);
    let text = sandbox.run(&["status", "--socket", socket.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&text.stdout).into_owned();
    assert!(
        text.lines()
            .any(|l| l.contains(&format!("pid {leaver:>7}")) && l.ends_with("(exiting)")),
        "{text}"
    );
    hold.release("wait");
    let (code, report) = finished(apply);
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(report["outcome"], "committed", "{report:#}");
    let outcomes = member_outcomes(&report);
    assert_eq!(outcomes.len(), 3, "{report:#}");
    for (pid, outcome) in &outcomes {
        let want = if *pid == u64::from(leaver) {
            "exited"
        } else {
            "committed"
        };
        assert_eq!(outcome, want, "member {pid}: {report:#}");
    }
    wait_until(
        Duration::from_secs(60),
        || !Path::new(&format!("/proc/{leaver}")).exists() || proc_state(leaver) == Some('Z'),
        || format!("worker {leaver} never exited"),
    );
    let rest: Vec<(u32, String)> = versions_of(&sandbox, &[leaver]);
    assert_eq!(rest.len(), 1, "{rest:?}");
    for (pid, v) in rest {
        assert_eq!(v, "'v2'", "worker {pid}");
    }
}

/// A worker that committed and then began to exit, when another member's
/// check fails: it rolls back all the same (its exit waits for that), so
/// the report's "every member that had committed was rolled back" is
/// true.
#[test]
fn a_worker_exiting_after_its_commit_still_rolls_back_when_another_member_fails() {
    let sandbox = Sandbox::new();
    let (mut tree, hold) = exiting_tree(&sandbox, 2);
    let socket = tree.master.socket();
    let ports = worker_ports(&sandbox);
    let (leaver, port) = ports[0];
    let (failer, _) = ports[1];
    sandbox.write("app.py", APP_V2);
    // Every member that commits holds right after its pause.
    hold.arm("sweep");
    let spec = format!("{SPEC}\n[check]\nafter = \"__import__('os').getpid() != {failer}\"\n");
    let apply = apply_in_background(&sandbox, &tree, &spec, true);
    wait_until(
        Duration::from_secs(60),
        || member_status(&socket, leaver)["in_progress"]["phase"] == "sweep",
        || format!("worker {leaver} never committed: {:#}", common::status(&socket)),
    );
    retire(&socket, leaver, port);
    hold.release("sweep");
    let (code, report) = finished(apply);
    assert_eq!(code, 1, "{report:#}");
    let message = report["problem"]["message"].as_str().unwrap();
    assert!(message.contains(&format!("pid {failer}")), "{message}");
    assert!(
        message.ends_with("every member that had committed was rolled back"),
        "{message}"
    );
    for (pid, outcome) in member_outcomes(&report) {
        assert_eq!(outcome, "rolled_back", "member {pid}: {report:#}");
    }
    assert_eq!(tree.master.ask("app.work()"), "'v1'");
    for (pid, v) in versions_of(&sandbox, &[leaver]) {
        assert_eq!(v, "'v1'", "worker {pid}");
    }
}

/// A worker the master forks while it waits for the commit (the master
/// holds the GIL switch interval short then) has the program's own
/// interval, and commits with the tree: born old, it joins late.
#[test]
fn a_worker_forked_while_its_master_waits_for_the_commit_keeps_the_programs_switch_interval() {
    let sandbox = Sandbox::new();
    let mut tree = Tree::start(&sandbox, 2, true);
    let (stuck, _) = worker_ports(&sandbox)[0];
    sandbox.write("app.py", APP_V2);
    let spec = spec_stuck_in(stuck, 60000, Some("__import__('os').path.exists('go')"));
    let apply = apply_in_background(&sandbox, &tree, &spec, true);
    let socket = tree.master.socket();
    // Staged, the master waits for the commit with the short interval.
    let mut waits = String::new();
    wait_until(
        Duration::from_secs(60),
        || {
            waits = tree.master.ask("__import__('sys').getswitchinterval()");
            waits != "0.005"
        },
        || format!("the master never waited for the commit: {:#}", common::status(&socket)),
    );
    assert!(waits.parse::<f64>().unwrap() < 0.001, "{waits}");
    let born: u32 = tree.master.ask("spawn()").parse().unwrap();
    wait_until(
        Duration::from_secs(60),
        || worker_ports(&sandbox).iter().any(|(pid, _)| *pid == born),
        || format!("worker {born} never served"),
    );
    let port = worker_ports(&sandbox)
        .into_iter()
        .find(|(pid, _)| *pid == born)
        .unwrap()
        .1;
    assert_eq!(ask_worker(port, "__import__('sys').getswitchinterval()"), "0.005");
    sandbox.write("go", "");
    let (code, report) = finished(apply);
    assert_eq!(code, 0, "{report:#}");
    assert!(
        member_outcomes(&report)
            .iter()
            .any(|(pid, o)| *pid == u64::from(born) && o == "committed"),
        "{report:#}"
    );
    assert_eq!(ask_worker(port, "app.work()"), "'v2'");
    assert_eq!(tree.master.ask("__import__('sys').getswitchinterval()"), "0.005");
}

/// `versions`, but for the workers other than `except` that still serve.
fn versions_of(sandbox: &Sandbox, except: &[u32]) -> Vec<(u32, String)> {
    worker_ports(sandbox)
        .into_iter()
        .filter(|(pid, _)| !except.contains(pid))
        .map(|(pid, port)| (pid, ask_worker(port, "app.work()")))
        .collect()
}

/// The state letter of `/proc/<pid>/stat` (`Z` for a zombie).
fn proc_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(") ")?.1.chars().next()
}
