//! Processes a hosted program starts with `sys.executable`: under `pyreload
//! run` that is the tree's stand-in for python (`src/host/shim.rs`), so a
//! multiprocessing **spawn** child is a member of the tree and a tree-wide
//! `apply` updates it, while any other command (`-c 'print(1)'`) runs as
//! python itself. `--no-spawn-members` leaves `sys.executable` the real
//! python and the children out.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::tree::{self, COMMITTED};
use common::{make_venv, stdout, wait_until, Hosted, Launch, Sandbox, BUILD_PYTHON};
use serde_json::Value;

/// `start()` starts a spawn child (`kid.serve`; `start(method="forkserver")`
/// through multiprocessing's forkserver) and returns its pid once
/// it answers; `ask(pid, what)` asks it `"value"` (its `work.VALUE`),
/// `"exe"` (`sys.executable`), `"prefix"`, `"ppid"` or `"spawn"` (it starts a child of
/// its own and answers that one's pid); `stop(pid)` ends it.
const KID: &str = r#"import os, sys
import work

def serve(conn):
    kids = {}
    conn.send(os.getpid())
    while True:
        what = conn.recv()
        if what == "value":
            conn.send(work.VALUE)
        elif what == "exe":
            conn.send(sys.executable)
        elif what == "prefix":
            conn.send(sys.prefix)
        elif what == "ppid":
            conn.send(os.getppid())
        elif what == "spawn":
            import prog
            pid = prog.start(kids)
            conn.send(pid)
        elif what == "exit":
            for p, c in kids.values():
                c.send("exit")
                p.join()
            conn.send("bye")
            return
"#;

const PROG: &str = r#"import multiprocessing, os, subprocess, sys
import kid, work

CHILDREN = {}

def start(children=CHILDREN, method="spawn"):
    ctx = multiprocessing.get_context(method)
    mine, theirs = ctx.Pipe()
    p = ctx.Process(target=kid.serve, args=(theirs,))
    p.start()
    pid = mine.recv()
    children[pid] = (p, mine)
    return pid

def ask(pid, what):
    conn = CHILDREN[pid][1]
    conn.send(what)
    return conn.recv()

def stop(pid):
    p, conn = CHILDREN.pop(pid)
    conn.send("exit")
    conn.recv()
    p.join()
    return p.exitcode

def python(*args):
    done = subprocess.run([sys.executable, *args], capture_output=True, text=True)
    return (done.returncode, done.stdout, done.stderr)

if __name__ == "__main__":
    print("ready", flush=True)
    for line in sys.stdin:
        try:
            result = repr(eval(line, globals()))
        except Exception as e:
            result = f"raised {type(e).__name__}: {e}"
        print(result, flush=True)
"#;

const SPEC: &str = r#"[update]
name = "work-v2"
from = "1"
to = "2"

[[reload]]
module = "work"

[safe_point]
timeout_ms = 10000
"#;

fn start(sandbox: &Sandbox, extra: &[&str], env: Vec<(&str, String)>) -> Hosted {
    sandbox.write("work.py", "VALUE = 1\n");
    sandbox.write("kid.py", KID);
    sandbox.write("prog.py", PROG);
    let mut args: Vec<String> = extra.iter().map(|a| a.to_string()).collect();
    args.extend(["--version", "1", "prog.py"].map(String::from));
    let mut p = Hosted::start(
        sandbox,
        Launch {
            args,
            cwd: sandbox.path().to_path_buf(),
            interactive: true,
            env,
        },
    );
    p.expect_line("ready");
    p
}

fn status_json(sandbox: &Sandbox, socket: &Path) -> Value {
    let out = sandbox.run(&["status", "--json", "--socket", socket.to_str().unwrap()]);
    assert!(out.status.success(), "{}", sandbox.transcript());
    serde_json::from_slice(&out.stdout).unwrap()
}

fn tree_dir(sandbox: &Sandbox, root: u32) -> PathBuf {
    sandbox.runtime_dir().join(format!("tree-{root}"))
}

/// A Python string literal's value, as the probe printed it with `repr`.
fn unquote(answer: &str) -> String {
    answer.trim_matches('\'').to_string()
}

/// The file name `sys.executable` keeps: the real python's.
fn build_python_name() -> String {
    Path::new(BUILD_PYTHON)
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

#[test]
fn a_spawn_child_is_a_member_and_a_tree_update_reaches_it() {
    let sandbox = Sandbox::new();
    let mut p = start(&sandbox, &[], vec![]);
    let root = p.pid();
    let shim = tree_dir(&sandbox, root).join("bin").join(build_python_name());
    assert_eq!(unquote(&p.ask_value("sys.executable")), shim.display().to_string());
    // The real one stays the base, so `venv` still builds on the real python.
    assert_eq!(unquote(&p.ask_value("sys._base_executable")), BUILD_PYTHON);

    let child: u32 = p.ask("start()").parse().unwrap_or_else(|_| panic!("{}", p.logs()));
    assert_eq!(p.ask(&format!("ask({child}, 'ppid')")), root.to_string());
    // Its own children are started through the stand-in too.
    assert_eq!(
        unquote(&p.ask(&format!("ask({child}, 'exe')"))),
        shim.display().to_string()
    );
    assert_eq!(
        std::fs::read_link(format!("/proc/{child}/exe")).unwrap(),
        std::fs::canonicalize(common::BIN).unwrap(),
        "the spawn child is not pyreload"
    );

    let status = status_json(&sandbox, &p.socket());
    let members = tree::status_members(&status);
    let m = members
        .iter()
        .find(|m| m.pid == child)
        .unwrap_or_else(|| panic!("the spawn child {child} is no member: {status:#}\n{}", p.logs()));
    assert_eq!(m.ppid, root, "{status:#}");
    assert_eq!(m.version, "1", "{status:#}");
    assert!(
        tree_dir(&sandbox, root).join(format!("{child}.sock")).exists(),
        "{status:#}"
    );

    sandbox.write("work.py", "VALUE = 2\n");
    let spec = sandbox.write("v2.toml", SPEC);
    let (code, report) = sandbox.apply_json(&p, &spec);
    assert_eq!(code, 0, "{report:#}\n{}", p.logs());
    assert_eq!(tree::outcome(&report), COMMITTED, "{report:#}");
    let listed: Vec<u32> = tree::report_members(&report).iter().map(|m| m.pid).collect();
    assert!(listed.contains(&child) && listed.contains(&root), "{report:#}");
    assert_eq!(p.ask(&format!("ask({child}, 'value')")), "2", "{}", p.logs());
    assert_eq!(p.ask_value("work.VALUE"), "2");
    let status = status_json(&sandbox, &p.socket());
    assert!(
        tree::status_members(&status).iter().all(|m| m.version == "2"),
        "{status:#}"
    );

    // A child the member spawns is a member too, born at the tree's version.
    let grandchild: u32 = p.ask(&format!("ask({child}, 'spawn')")).parse().unwrap();
    let status = status_json(&sandbox, &p.socket());
    let members = tree::status_members(&status);
    let g = members
        .iter()
        .find(|m| m.pid == grandchild)
        .unwrap_or_else(|| panic!("the grandchild {grandchild} is no member: {status:#}"));
    assert_eq!((g.ppid, g.version.as_str()), (child, "2"), "{status:#}");

    assert_eq!(p.ask(&format!("stop({child})")), "0");
    wait_until(
        Duration::from_secs(10),
        || tree::status_members(&status_json(&sandbox, &p.socket())).is_empty(),
        || format!("the stopped children are still listed\n{}", p.logs()),
    );
}

#[test]
fn another_command_through_sys_executable_is_python_itself() {
    let sandbox = Sandbox::new();
    let mut p = start(&sandbox, &[], vec![]);
    let script = "import os, sys; print(sys.executable, sys.prefix, os.path.realpath('/proc/self/exe'), sys.argv)";
    let (code, out, err) = {
        let direct = std::process::Command::new(BUILD_PYTHON)
            .args(["-c", script, "x"])
            .env_remove("VIRTUAL_ENV")
            .output()
            .unwrap();
        (direct.status.code().unwrap(), stdout(&direct), common::stderr(&direct))
    };
    // What python prints for itself, run directly, is what the program's
    // `sys.executable -c ...` prints: the real python, not the stand-in.
    let through = p.ask(&format!("python('-c', {script:?}, 'x')"));
    assert_eq!(
        p.ask(&format!("python('-c', {script:?}, 'x') == ({code}, {out:?}, {err:?})")),
        "True",
        "python runs as {out:?}, the program's sys.executable as {through}\n{}",
        p.logs()
    );
    assert!(!through.contains("tree-"), "{through}");
    assert_eq!(p.ask("python('-c', 'raise SystemExit(7)')"), "(7, '', '')");
    // Not a member: the root has no member.
    let status = status_json(&sandbox, &p.socket());
    assert_eq!(tree::status_members(&status), vec![], "{status:#}");
}

#[test]
fn in_a_virtualenv_children_run_the_venvs_python() {
    let sandbox = Sandbox::new();
    let venv = sandbox.path().join("venv");
    make_venv(&venv);
    let mut p = start(&sandbox, &[], vec![("VIRTUAL_ENV", venv.display().to_string())]);
    let root = p.pid();
    assert_eq!(
        unquote(&p.ask_value("sys.executable")),
        tree_dir(&sandbox, root).join("bin/python").display().to_string()
    );
    assert_eq!(unquote(&p.ask_value("sys.prefix")), venv.display().to_string());
    assert_eq!(
        p.ask("python('-c', 'import sys; print(sys.prefix, sys.executable)')"),
        format!("(0, '{} {}\\n', '')", venv.display(), venv.join("bin/python").display())
    );
    let child: u32 = p.ask("start()").parse().unwrap_or_else(|_| panic!("{}", p.logs()));
    let status = status_json(&sandbox, &p.socket());
    assert!(
        tree::status_members(&status).iter().any(|m| m.pid == child),
        "{status:#}"
    );
    assert_eq!(
        unquote(&p.ask(&format!("ask({child}, 'prefix')"))),
        venv.display().to_string(),
        "{}",
        p.logs()
    );
}

#[test]
fn no_spawn_members_leaves_spawn_children_out() {
    let sandbox = Sandbox::new();
    let mut p = start(&sandbox, &["--no-spawn-members"], vec![]);
    let root = p.pid();
    assert_eq!(unquote(&p.ask_value("sys.executable")), BUILD_PYTHON);
    let child: u32 = p.ask("start()").parse().unwrap_or_else(|_| panic!("{}", p.logs()));
    assert_eq!(unquote(&p.ask(&format!("ask({child}, 'exe')"))), BUILD_PYTHON);
    let status = status_json(&sandbox, &p.socket());
    assert_eq!(tree::status_members(&status), vec![], "{status:#}");
    assert!(!tree_dir(&sandbox, root).join("bin").exists());
    assert_eq!(p.ask(&format!("stop({child})")), "0");
}

#[test]
fn the_stand_in_goes_when_the_root_exits() {
    let sandbox = Sandbox::new();
    let mut p = start(&sandbox, &[], vec![]);
    let root = p.pid();
    let dir = tree_dir(&sandbox, root);
    let child: u32 = p.ask("start()").parse().unwrap();
    assert!(dir.join("bin").exists());
    assert_eq!(p.ask(&format!("stop({child})")), "0");
    drop(p.stdin.take());
    let status = p.wait(Duration::from_secs(30));
    assert!(status.success(), "{}", p.logs());
    assert!(!dir.exists(), "{} is left behind", dir.display());
}

#[test]
fn the_forkserver_and_its_children_are_members() {
    let sandbox = Sandbox::new();
    let mut p = start(&sandbox, &[], vec![]);
    let root = p.pid();
    let dir = tree_dir(&sandbox, root);
    let child: u32 = p
        .ask("start(method='forkserver')")
        .parse()
        .unwrap_or_else(|_| panic!("{}", p.logs()));
    let server: u32 = p.ask(&format!("ask({child}, 'ppid')")).parse().unwrap();
    assert_ne!(server, root, "the child was not forked by the forkserver");
    let status = status_json(&sandbox, &p.socket());
    let members = tree::status_members(&status);
    let pairs: Vec<(u32, u32)> = members.iter().map(|m| (m.pid, m.ppid)).collect();
    assert!(
        pairs.contains(&(server, root)),
        "the forkserver is no member: {status:#}"
    );
    assert!(pairs.contains(&(child, server)), "its child is no member: {status:#}");
    let fs = members.iter().find(|m| m.pid == server).unwrap();
    assert!(fs.role.contains("multiprocessing.forkserver"), "{fs:?}");

    sandbox.write("work.py", "VALUE = 2\n");
    let spec = sandbox.write("v2.toml", SPEC);
    let (code, report) = sandbox.apply_json(&p, &spec);
    assert_eq!(code, 0, "{report:#}\n{}", p.logs());
    assert_eq!(p.ask(&format!("ask({child}, 'value')")), "2", "{}", p.logs());

    assert_eq!(p.ask(&format!("stop({child})")), "0");
    drop(p.stdin.take());
    assert!(p.wait(Duration::from_secs(30)).success(), "{}", p.logs());
    // The forkserver exits once the root has: it removes the tree then.
    wait_until(
        Duration::from_secs(10),
        || !dir.exists(),
        || format!("{} is left behind", dir.display()),
    );
}

/// pyreload started as `python…` outside a tree says what it is, and runs
/// nothing.
#[test]
fn the_binary_named_python_outside_a_tree_refuses() {
    let sandbox = Sandbox::new();
    let fake = sandbox.path().join("python3");
    std::os::unix::fs::symlink(common::BIN, &fake).unwrap();
    let out = std::process::Command::new(&fake)
        .args(["-c", "print(1)"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert_eq!(stdout(&out), "");
    let err = common::stderr(&out);
    assert!(
        err.contains("is started as python") && err.contains("shim.json"),
        "{err}"
    );
}
