//! `pyreload run` must behave like `python3`: every test here runs the same
//! program both ways and compares what a user would see. `python3` is the
//! interpreter pyreload was built for, which need not be the one on PATH.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::{stderr, stdout, Sandbox};
use nix::sys::signal::Signal;

/// The interpreter this `pyreload` was built for and embeds (`PYO3_PYTHON`,
/// else `python3` on PATH at build time): the one to compare against.
const BUILD_PYTHON: &str = env!("PYRELOAD_BUILD_PYTHON");

const INTROSPECT: &str = r#"
import json, sys, threading
print(json.dumps({
    "argv": sys.argv,
    "path": sys.path,
    "prefix": sys.prefix,
    "base_prefix": sys.base_prefix,
    "version": sys.version,
    "name": __name__,
    "trace": repr(sys.gettrace()),
    "profile": repr(sys.getprofile()),
    "threads": threading.active_count(),
    "switchinterval": sys.getswitchinterval(),
    "pyreload_imported": "pyreload" in sys.modules,
}))
sys.exit(int(sys.argv[1]))
"#;

fn python3(sandbox: &Sandbox, args: &[&str]) -> Output {
    Command::new(BUILD_PYTHON)
        .args(args)
        .current_dir(sandbox.path())
        .env_remove("VIRTUAL_ENV")
        .output()
        .unwrap()
}

fn hosted(sandbox: &Sandbox, args: &[&str]) -> Output {
    sandbox
        .pyreload()
        .arg("run")
        .args(args)
        .current_dir(sandbox.path())
        .output()
        .unwrap()
}

fn json(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}{}", stdout(out), stderr(out)))
}

#[test]
fn script_sees_the_same_argv_path_prefix_and_version_as_python3() {
    let sandbox = Sandbox::new();
    sandbox.write("app/introspect.py", INTROSPECT);
    let args = ["app/introspect.py", "3", "--flag", "-x", "two words"];
    let (ours, theirs) = (hosted(&sandbox, &args), python3(&sandbox, &args));
    assert_eq!(ours.status.code(), Some(3), "{}", stderr(&ours));
    assert_eq!(theirs.status.code(), Some(3));
    let (ours, theirs) = (json(&ours), json(&theirs));
    for field in [
        "argv",
        "path",
        "prefix",
        "base_prefix",
        "version",
        "name",
        "trace",
        "profile",
        "threads",
        "switchinterval",
        "pyreload_imported",
    ] {
        assert_eq!(ours[field], theirs[field], "sys field `{field}` differs from python3");
    }
    // Nothing runs between updates: no trace or profile hook, no extra
    // Python thread.
    assert_eq!(ours["trace"], "None");
    assert_eq!(ours["threads"], 1);
}

#[test]
fn dash_m_runs_a_module_like_python3() {
    let sandbox = Sandbox::new();
    sandbox.write("pkg/__init__.py", "");
    sandbox.write(
        "pkg/tool.py",
        "import sys, json\nprint(json.dumps({'argv': sys.argv[1:], 'name': __name__, 'path0': sys.path[0]}))\n",
    );
    let ours = hosted(&sandbox, &["-m", "pkg.tool", "--port", "7", "x"]);
    let theirs = python3(&sandbox, &["-m", "pkg.tool", "--port", "7", "x"]);
    assert!(ours.status.success(), "{}", stderr(&ours));
    assert_eq!(json(&ours), json(&theirs));
    assert_eq!(json(&ours)["argv"], serde_json::json!(["--port", "7", "x"]));
}

#[test]
fn stdin_stdout_stderr_and_uncaught_exceptions_pass_through() {
    let sandbox = Sandbox::new();
    sandbox.write(
        "echo.py",
        "import sys\nfor line in sys.stdin:\n    print(line.strip().upper())\nprint('to stderr', file=sys.stderr)\nraise ValueError('boom')\n",
    );
    let run = |mut cmd: Command| {
        let mut child = cmd
            .arg("echo.py")
            .current_dir(sandbox.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child.stdin.take().unwrap().write_all(b"hello\nworld\n").unwrap();
        child.wait_with_output().unwrap()
    };
    let mut ours = sandbox.pyreload();
    ours.arg("run");
    let ours = run(ours);
    let theirs = run(Command::new(BUILD_PYTHON));
    assert_eq!(stdout(&ours), "HELLO\nWORLD\n");
    assert_eq!(stdout(&ours), stdout(&theirs));
    assert_eq!(ours.status.code(), Some(1));
    assert_eq!(ours.status.code(), theirs.status.code());
    assert!(stderr(&ours).contains("to stderr\nTraceback"), "{}", stderr(&ours));
    assert!(stderr(&ours).ends_with("ValueError: boom\n"), "{}", stderr(&ours));
}

/// Starts `sleeper.py` under `cmd`, waits until it is ready, sends `signal`,
/// and returns how it ended.
fn interrupt(sandbox: &Sandbox, mut cmd: Command, signal: Signal) -> (std::process::ExitStatus, String, String) {
    use std::os::unix::process::{CommandExt, ExitStatusExt};
    // A process started with a signal ignored keeps it ignored, and Python
    // then installs no handler for it (a test run from a background job of
    // a non-interactive shell has SIGINT ignored). The signal is sent as a
    // terminal would send it to a foreground program: at its default.
    let default_disposition = move || {
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe { nix::sys::signal::signal(signal, nix::sys::signal::SigHandler::SigDfl) }
            .map(drop)
            .map_err(std::io::Error::from)
    };
    // SAFETY: the closure above is async-signal-safe.
    unsafe {
        cmd.pre_exec(default_disposition);
    }
    let mut child = cmd
        .arg("sleeper.py")
        .current_dir(sandbox.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line, "ready\n");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), signal).unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut out, &mut rest).unwrap();
    let mut err = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
    let status = child.wait().unwrap();
    let _ = status.signal();
    (status, rest, err)
}

/// Says `ready` only once inside the `try`, so a signal sent after `ready`
/// always finds the `finally` armed.
const SLEEPER: &str = "import time\ntry:\n    print('ready', flush=True)\n    time.sleep(30)\nfinally:\n    print('finally ran', flush=True)\n";

#[test]
fn ctrl_c_raises_keyboard_interrupt_like_python3() {
    use std::os::unix::process::ExitStatusExt;
    let sandbox = Sandbox::new();
    sandbox.write("sleeper.py", SLEEPER);
    let mut ours = sandbox.pyreload();
    ours.arg("run");
    let (status, out, err) = interrupt(&sandbox, ours, Signal::SIGINT);
    let (py_status, py_out, py_err) = interrupt(&sandbox, Command::new(BUILD_PYTHON), Signal::SIGINT);
    assert_eq!(out, "finally ran\n", "the program's own cleanup must run");
    assert_eq!(out, py_out);
    assert!(err.trim_end().ends_with("KeyboardInterrupt"), "{err}");
    assert!(py_err.trim_end().ends_with("KeyboardInterrupt"));
    assert_eq!((status.code(), status.signal()), (py_status.code(), py_status.signal()));
}

#[test]
fn sigterm_ends_the_program_like_python3() {
    use std::os::unix::process::ExitStatusExt;
    let sandbox = Sandbox::new();
    sandbox.write("sleeper.py", SLEEPER);
    let mut ours = sandbox.pyreload();
    ours.arg("run");
    let (status, _, _) = interrupt(&sandbox, ours, Signal::SIGTERM);
    let (py_status, _, _) = interrupt(&sandbox, Command::new(BUILD_PYTHON), Signal::SIGTERM);
    assert_eq!(status.signal(), Some(15));
    assert_eq!((status.code(), status.signal()), (py_status.code(), py_status.signal()));
}

#[test]
fn a_package_installed_only_in_the_active_virtualenv_imports() {
    let sandbox = Sandbox::new();
    let venv = sandbox.path().join("venv");
    common::make_venv(&venv);
    let site = Command::new(venv.join("bin/python"))
        .args(["-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"])
        .output()
        .unwrap();
    let site = stdout(&site).trim().to_string();
    std::fs::create_dir_all(format!("{site}/venvonly")).unwrap();
    std::fs::write(
        format!("{site}/venvonly/__init__.py"),
        "MARK = 'installed in the venv'\n",
    )
    .unwrap();
    sandbox.write(
        "uses_venv.py",
        "import sys, venvonly\nprint(venvonly.MARK)\nprint(sys.prefix)\n",
    );

    let path = format!("{}:{}", venv.join("bin").display(), std::env::var("PATH").unwrap());
    let ours = sandbox
        .pyreload()
        .args(["run", "uses_venv.py"])
        .current_dir(sandbox.path())
        .env("VIRTUAL_ENV", &venv)
        .env("PATH", &path)
        .output()
        .unwrap();
    assert!(ours.status.success(), "{}", stderr(&ours));
    let canonical_venv = venv.canonicalize().unwrap();
    assert_eq!(
        stdout(&ours),
        format!("installed in the venv\n{}\n", canonical_venv.display())
    );
    let theirs = Command::new(venv.join("bin/python"))
        .arg("uses_venv.py")
        .current_dir(sandbox.path())
        .output()
        .unwrap();
    assert_eq!(stdout(&ours), stdout(&theirs));

    // Outside the venv the package is not there: the import above really
    // came from the venv's site-packages.
    let outside = hosted(&sandbox, &["uses_venv.py"]);
    assert!(!outside.status.success());
    assert!(
        stderr(&outside).contains("ModuleNotFoundError: No module named 'venvonly'"),
        "{}",
        stderr(&outside)
    );
}

#[test]
fn the_binary_loads_the_libpython_of_the_python3_it_was_built_with() {
    let libdir = Command::new(BUILD_PYTHON)
        .args(["-c", "import sysconfig; print(sysconfig.get_config_var('LIBDIR'))"])
        .output()
        .unwrap();
    let libdir = stdout(&libdir).trim().to_string();
    let ldd = Command::new("ldd").arg(common::BIN).output().unwrap();
    let line = stdout(&ldd)
        .lines()
        .find(|l| l.contains("libpython"))
        .map(str::to_string)
        .unwrap_or_default();
    assert!(
        line.contains(&libdir),
        "pyreload links {line:?}, not the libpython in {libdir}"
    );
}

#[test]
fn the_program_can_ask_pyreload_for_its_name_and_version() {
    let sandbox = Sandbox::new();
    sandbox.write(
        "ver.py",
        "import pyreload\nprint(pyreload.name(), pyreload.version())\n",
    );
    let out = sandbox
        .pyreload()
        .args(["run", "--name", "svc", "--version", "1.4", "ver.py"])
        .current_dir(sandbox.path())
        .output()
        .unwrap();
    assert_eq!(stdout(&out), "svc 1.4\n", "{}", stderr(&out));
    let out = hosted(&sandbox, &["ver.py"]);
    assert_eq!(stdout(&out), "ver None\n", "{}", stderr(&out));
}

#[test]
fn a_missing_script_is_a_usage_error() {
    let sandbox = Sandbox::new();
    let out = hosted(&sandbox, &["nosuch.py"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("can't open file 'nosuch.py'"), "{}", stderr(&out));
    let out = sandbox.pyreload().arg("run").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("give a script, or -m MODULE"), "{}", stderr(&out));
}

#[test]
fn a_forked_child_that_exits_leaves_the_parents_socket_alone() {
    let sandbox = Sandbox::new();
    sandbox.write(
        "forks.py",
        "import os, sys\npid = os.fork()\nif pid == 0:\n    sys.exit(0)\nos.waitpid(pid, 0)\nprint(os.path.exists(os.path.join(os.environ['PYRELOAD_RUNTIME_DIR'], f'{os.getpid()}.sock')))\n",
    );
    let out = hosted(&sandbox, &["forks.py"]);
    assert_eq!(stdout(&out), "True\n", "{}", stderr(&out));
}

#[test]
fn the_control_socket_is_private_and_removed_on_exit() {
    use std::os::unix::fs::PermissionsExt;
    let sandbox = Sandbox::new();
    sandbox.write(
        "waits.py",
        "import sys\nprint('ready', flush=True)\nsys.stdin.readline()\n",
    );
    let mut child = sandbox
        .pyreload()
        .args(["run", "waits.py"])
        .current_dir(sandbox.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    let socket = sandbox.runtime_dir().join(format!("{}.sock", child.id()));
    common::wait_until(Duration::from_secs(60), || socket.exists(), || "no socket".into());
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&sandbox.runtime_dir()), 0o700);
    assert_eq!(mode(&socket), 0o600);
    drop(child.stdin.take());
    assert!(child.wait().unwrap().success());
    assert!(!socket.exists(), "the socket outlived the program");
}
