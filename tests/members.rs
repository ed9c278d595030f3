//! Processes forked from a hosted program are members of its tree: each has
//! its own control socket under `<runtime>/tree-<rootpid>/`, serves the
//! same requests as the root for itself, and the root's `status` lists the
//! live ones. Members that exec or `os._exit` leave the tree.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{control, probe, stdout, wait_until, Hosted, Sandbox, BUILD_PYTHON, PROBE_LOOP};
use serde_json::{json, Value};

/// `spawn(depth)` forks a chain of `depth` members (a child, its child,
/// ...), each of which reports `pid ppid` once running and then blocks
/// until `release(pid)`. Then each reports the `gate.VALUE` it runs and
/// leaves with `os._exit` (as multiprocessing's children do), and
/// `release` returns those reports. `spawn_exec()` forks a child that
/// execs a plain python, which reports `execd` and blocks the same way.
const PROGRAM: &str = r#"import os, sys
import gate

HANDLES = {}

def _member(r, pw, depth):
    if depth > 1 and os.fork() == 0:
        _member(r, pw, depth - 1)
    os.write(pw, f"pid {os.getpid()} {os.getppid()}\n".encode())
    os.read(r, 1)
    os.write(pw, f"value {os.getpid()} {gate.VALUE}\n".encode())
    os._exit(0)

def _spawn(depth, child):
    r, w = os.pipe()
    pr, pw = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(w)
        os.close(pr)
        child(r, pw, depth)
    os.close(r)
    os.close(pw)
    report = os.fdopen(pr)
    lines = [report.readline().split() for _ in range(depth)]
    HANDLES[pid] = (w, report, depth)
    return pid, lines

def spawn(depth):
    pid, lines = _spawn(depth, _member)
    return {int(l[1]): int(l[2]) for l in lines}

def _exec(r, pw, depth):
    os.write(pw, f"pid {os.getpid()} {os.getppid()}\n".encode())
    os.set_inheritable(r, True)
    os.set_inheritable(pw, True)
    os.execv(PYTHON, [PYTHON, "-c", "import os, sys; os.write(int(sys.argv[2]), b'execd\\n'); os.read(int(sys.argv[1]), 1)", str(r), str(pw)])

def spawn_exec():
    pid, lines = _spawn(2, _exec)
    assert lines[1] == ["execd"], lines
    return pid

def release(pid):
    w, report, depth = HANDLES.pop(pid)
    os.write(w, b"x" * depth)
    lines = sorted(report.readline().strip() for _ in range(depth))
    os.waitpid(pid, 0)
    return lines
"#;

fn start(sandbox: &Sandbox) -> Hosted {
    sandbox.write(
        "gate.py",
        "VALUE = 1\nOPEN = [False]\n\ndef is_open():\n    return OPEN[0]\n",
    );
    sandbox.write("prog.py", &format!("PYTHON = {BUILD_PYTHON:?}\n{PROGRAM}{PROBE_LOOP}"));
    probe(sandbox, &["--version", "1", "prog.py"])
}

/// The parsed `{pid: ppid}` a `spawn(...)` answered.
fn pids(answer: &str) -> Vec<(u32, u32)> {
    let mut out: Vec<(u32, u32)> = answer
        .trim_matches(|c| c == '{' || c == '}')
        .split(", ")
        .map(|pair| {
            let (pid, ppid) = pair
                .split_once(": ")
                .unwrap_or_else(|| panic!("not a spawn answer: {answer}"));
            (pid.parse().unwrap(), ppid.parse().unwrap())
        })
        .collect();
    out.sort();
    out
}

fn tree_dir(sandbox: &Sandbox, root: u32) -> PathBuf {
    sandbox.runtime_dir().join(format!("tree-{root}"))
}

fn member_socket(sandbox: &Sandbox, root: u32, pid: u32) -> PathBuf {
    tree_dir(sandbox, root).join(format!("{pid}.sock"))
}

/// `pyreload status --json --socket S`, parsed.
fn status_json(sandbox: &Sandbox, socket: &Path) -> Value {
    let out = sandbox.run(&["status", "--json", "--socket", socket.to_str().unwrap()]);
    assert!(out.status.success(), "{}", sandbox.transcript());
    serde_json::from_slice(&out.stdout).unwrap()
}

fn member_pids(status: &Value) -> Vec<u64> {
    let mut pids: Vec<u64> = status["members"]
        .as_array()
        .unwrap_or_else(|| panic!("no members array: {status:#}"))
        .iter()
        .map(|m| m["pid"].as_u64().unwrap())
        .collect();
    pids.sort();
    pids
}

fn member(status: &Value, pid: u32) -> &Value {
    status["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["pid"] == pid)
        .unwrap_or_else(|| panic!("pid {pid} is not listed: {status:#}"))
}

fn spec(sandbox: &Sandbox, name: &str, to: &str, condition: Option<&str>) -> PathBuf {
    let condition = condition.map(|c| format!("condition = {c:?}\n")).unwrap_or_default();
    sandbox.write(
        &format!("{name}.toml"),
        &format!(
            "[update]\nname = {name:?}\nto = {to:?}\n\n[[reload]]\nmodule = \"gate\"\n\n\
             [safe_point]\n{condition}timeout_ms = 60000\n"
        ),
    )
}

#[test]
fn forked_children_and_grandchildren_are_members_of_the_roots_tree() {
    let sandbox = Sandbox::new();
    let mut p = start(&sandbox);
    let root = p.pid();
    let spawned = pids(&p.ask("spawn(2)"));
    let (child, grandchild) = match spawned.as_slice() {
        [(a, pa), (b, pb)] if *pa == root && *pb == *a => (*a, *b),
        [(a, pa), (b, pb)] if *pb == root && *pa == *b => (*b, *a),
        other => panic!("spawn(2) made {other:?}"),
    };

    let status = status_json(&sandbox, &p.socket());
    assert_eq!(status["pid"], root);
    assert_eq!(status["root_pid"], root);
    assert_eq!(
        member_pids(&status),
        vec![child.min(grandchild) as u64, child.max(grandchild) as u64]
    );
    for (pid, ppid) in [(child, root), (grandchild, child)] {
        let m = member(&status, pid);
        assert_eq!(m["ppid"], ppid, "{m:#}");
        assert_eq!(m["root_pid"], root, "{m:#}");
        assert_eq!(m["version"], "1", "{m:#}");
        assert!(m["unreachable"].is_null(), "{m:#}");
        assert!(m["role"].as_str().unwrap().contains("prog.py"), "{m:#}");
        let socket = member_socket(&sandbox, root, pid);
        assert_eq!(m["socket"], socket.display().to_string());
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", socket.display());
    }
    let dir_mode = {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(tree_dir(&sandbox, root))
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(dir_mode, 0o700);

    // A member answers `status` for itself, and says whose tree it is in.
    let own = status_json(&sandbox, &member_socket(&sandbox, root, grandchild));
    assert_eq!(own["pid"], grandchild);
    assert_eq!(own["ppid"], child);
    assert_eq!(own["root_pid"], root);

    // Discovery still finds one program, not three.
    let all = sandbox.run(&["status", "--json"]);
    let all: Value = serde_json::from_slice(&all.stdout).unwrap();
    assert_eq!(all["pid"], root, "members were listed as programs: {all:#}");
    let text = stdout(&sandbox.run(&["status", "--socket", p.socket().to_str().unwrap()]));
    assert!(text.contains("members: 2 forked process(es)"), "{text}");
    assert!(
        text.contains(&format!("pid {child:>7}  ppid {root:>7}  version 1")),
        "{text}"
    );

    assert_eq!(p.ask(&format!("release({child})")).matches("value").count(), 2);
}

#[test]
fn an_update_sent_to_a_member_changes_only_that_member() {
    let sandbox = Sandbox::new();
    let mut p = start(&sandbox);
    let root = p.pid();
    let spawned = pids(&p.ask("spawn(1)"));
    let child = spawned[0].0;

    sandbox.write(
        "gate.py",
        "VALUE = 2\nOPEN = [False]\n\ndef is_open():\n    return OPEN[0]\n",
    );
    let spec = spec(&sandbox, "member-only", "2", None);
    let socket = member_socket(&sandbox, root, child);
    let (_, report) = common::web::apply_json_at(&sandbox, &socket, &spec);
    assert_eq!(report["outcome"], "committed", "{report:#}");
    assert_eq!(report["pid"], child, "{report:#}");

    let status = status_json(&sandbox, &p.socket());
    assert_eq!(status["version"], "1", "the root was updated too");
    assert_eq!(member(&status, child)["version"], "2");
    assert_eq!(p.ask("gate.VALUE"), "1", "the root runs the new code");
    assert_eq!(p.ask(&format!("release({child})")), format!("['value {child} 2']"));
}

#[test]
fn a_child_forked_while_its_parent_waits_for_an_update_can_be_updated_itself() {
    let sandbox = Sandbox::new();
    let mut p = start(&sandbox);
    let root = p.pid();
    // The root's gate holds the update back; a member forked meanwhile joins
    // the update when the root freezes, and its own condition holds.
    let condition = format!("gate.is_open() or __import__('os').getpid() != {root}");
    let waiting = spec(&sandbox, "waits", "2", Some(&condition));
    let apply = sandbox.spawn_apply_json(&p.socket(), &waiting);
    wait_until(
        Duration::from_secs(60),
        || common::status(&p.socket())["in_progress"]["phase"] == "wait",
        || "the update never reached its wait".into(),
    );
    // The parent's control thread holds the update gate and the phase lock
    // now; the child must have its own.
    let child = pids(&p.ask("spawn(1)"))[0].0;
    let socket = member_socket(&sandbox, root, child);
    let own = control(&socket, &json!({"type": "status", "protocol": 1})).unwrap();
    assert!(
        own["in_progress"].is_null(),
        "the child shows its parent's update: {own:#}"
    );

    sandbox.write(
        "gate.py",
        "VALUE = 3\nOPEN = [True]\n\ndef is_open():\n    return OPEN[0]\n",
    );
    let spec = spec(&sandbox, "in-child", "3", None);
    let (_, report) = common::web::apply_json_at(&sandbox, &socket, &spec);
    assert_eq!(report["outcome"], "committed", "{report:#}");

    assert_eq!(p.ask("gate.OPEN.__setitem__(0, True)"), "None");
    let out = apply.wait_with_output().unwrap();
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["outcome"], "committed", "{report:#}");
    assert_eq!(p.ask(&format!("release({child})")), format!("['value {child} 3']"));
}

#[test]
fn a_member_that_execs_leaves_the_tree() {
    let sandbox = Sandbox::new();
    let mut p = start(&sandbox);
    let root = p.pid();
    let child: u32 = p.ask("spawn_exec()").parse().unwrap();
    // It bound its member socket before the exec, and is alive after it.
    assert!(member_socket(&sandbox, root, child).exists());
    let status = status_json(&sandbox, &p.socket());
    assert_eq!(member_pids(&status), Vec::<u64>::new(), "{status:#}");
    assert!(
        !member_socket(&sandbox, root, child).exists(),
        "the exec'd member's socket was not pruned"
    );
    p.ask(&format!("release({child})"));
}

#[test]
fn a_member_that_leaves_with_os_exit_is_pruned() {
    let sandbox = Sandbox::new();
    let mut p = start(&sandbox);
    let root = p.pid();
    let child = pids(&p.ask("spawn(1)"))[0].0;
    assert_eq!(member_pids(&status_json(&sandbox, &p.socket())), vec![child as u64]);
    assert_eq!(p.ask(&format!("release({child})")), format!("['value {child} 1']"));
    // os._exit runs no exit hook: the socket is left behind, and the root
    // recognises it as stale.
    let socket = member_socket(&sandbox, root, child);
    assert!(socket.exists(), "expected the os._exit member to leave its socket");
    assert_eq!(member_pids(&status_json(&sandbox, &p.socket())), Vec::<u64>::new());
    assert!(!socket.exists(), "the stale member socket was not removed");
}

#[test]
fn a_member_socket_older_than_its_pids_process_is_pruned() {
    let sandbox = Sandbox::new();
    let p = start(&sandbox);
    let root = p.pid();
    // A live process that is no member, and a socket named after its pid
    // that something listens on, made before the process started: what a
    // reused pid looks like.
    let mut other = std::process::Command::new("sleep").arg("600").spawn().unwrap();
    let dir = tree_dir(&sandbox, root);
    {
        use std::os::unix::fs::DirBuilderExt;
        // The root made it (it holds the python stand-in, tests/spawn.rs).
        std::fs::DirBuilder::new()
            .mode(0o700)
            .recursive(true)
            .create(&dir)
            .unwrap();
    }
    let socket = dir.join(format!("{}.sock", other.id()));
    let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    let hour_ago = nix::sys::time::TimeVal::new(
        (std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            - 3600) as i64,
        0,
    );
    nix::sys::stat::utimes(&socket, &hour_ago, &hour_ago).unwrap();
    let status = status_json(&sandbox, &p.socket());
    let _ = other.kill();
    let _ = other.wait();
    assert_eq!(member_pids(&status), Vec::<u64>::new(), "{status:#}");
    assert!(!socket.exists(), "the socket of a reused pid was not removed");
}
