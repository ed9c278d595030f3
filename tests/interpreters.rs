//! Which interpreter `pyreload` embeds: the one it was built for, never
//! silently another. A virtualenv of another Python version is refused with
//! the command that builds a matching `pyreload`; and `pip install` of the
//! checkout into a virtualenv gives it a `pyreload` built for its own
//! interpreter.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{repo, stderr, stdout, Sandbox};

const BUILD_PYTHON: &str = env!("PYRELOAD_BUILD_PYTHON");
const BUILD_VERSION: &str = env!("PYRELOAD_BUILD_PYTHON_VERSION");

/// A virtualenv made by the build interpreter, then labelled (in its
/// `pyvenv.cfg`, where `python -m venv` records it) as another version, as
/// a venv of Python 3.99 would be.
fn venv_of_another_version(sandbox: &Sandbox) -> PathBuf {
    let venv = sandbox.path().join("venv");
    common::make_venv(&venv);
    let cfg = venv.join("pyvenv.cfg");
    let text = std::fs::read_to_string(&cfg).unwrap();
    let relabelled: String = text
        .lines()
        .map(|line| match line.split_once('=') {
            Some((key, _)) if matches!(key.trim(), "version" | "version_info") => format!("{key}= 3.99.0\n"),
            _ => format!("{line}\n"),
        })
        .collect();
    assert_ne!(text, relabelled, "pyvenv.cfg had no version line:\n{text}");
    std::fs::write(&cfg, relabelled).unwrap();
    venv
}

#[test]
fn a_virtualenv_of_another_python_version_is_refused_with_how_to_fix_it() {
    let sandbox = Sandbox::new();
    let venv = venv_of_another_version(&sandbox);
    sandbox.write("app.py", "open('ran', 'w').write('ran')\n");
    let out = sandbox
        .pyreload()
        .args(["run", "app.py"])
        .current_dir(sandbox.path())
        .env("VIRTUAL_ENV", &venv)
        .output()
        .unwrap();
    // 2, as for any `pyreload run` that cannot start the program.
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    eprintln!("{err}");
    assert!(
        err.contains(&format!(
            "uses Python 3.99.0, but this pyreload embeds Python {BUILD_VERSION}"
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!("PYO3_PYTHON={}", venv.join("bin/python").display())),
        "{err}"
    );
    assert!(!sandbox.path().join("ran").exists(), "the program ran anyway");

    // The same program outside that virtualenv runs.
    let out = sandbox
        .pyreload()
        .args(["run", "app.py"])
        .current_dir(sandbox.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(sandbox.path().join("ran").exists());
}

/// The interpreter for the `pip install` test: `PYRELOAD_PIP_TEST_PYTHON`
/// (`.ci/run` gives CPython 3.13), else the build interpreter.
fn pip_test_python() -> String {
    std::env::var("PYRELOAD_PIP_TEST_PYTHON").unwrap_or_else(|_| BUILD_PYTHON.to_string())
}

fn run_ok(cmd: &mut Command, what: &str) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed:\n{}\n{}",
        stdout(&out),
        stderr(&out)
    );
    stdout(&out)
}

/// Waits for a file the program writes, and returns its contents.
fn wait_for_file(path: &Path, logs: impl Fn() -> String) -> String {
    common::wait_until(
        Duration::from_secs(60),
        || path.exists() && std::fs::metadata(path).map(|m| m.len() > 0).unwrap_or(false),
        || format!("{} never appeared\n{}", path.display(), logs()),
    );
    std::fs::read_to_string(path).unwrap()
}

#[test]
#[ignore = "builds a release pyreload with pip (minutes, needs PyPI for maturin); .ci/run runs it with CPython 3.13"]
fn pip_install_into_a_virtualenv_gives_a_pyreload_for_its_interpreter() {
    let python = pip_test_python();
    let version = run_ok(
        Command::new(&python).args(["-c", "import sys; print('%d.%d' % sys.version_info[:2])"]),
        "python --version",
    );
    let version = version.trim();
    let sandbox = Sandbox::new();
    let venv = sandbox.path().join("venv");
    run_ok(Command::new(&python).args(["-m", "venv"]).arg(&venv), "python -m venv");
    // The release build is cached per version, under the checkout's target/.
    let target = repo().join("target").join(format!("pip-{version}"));
    run_ok(
        Command::new(venv.join("bin/pip"))
            .args(["install", "--quiet"])
            .arg(repo())
            .env("CARGO_TARGET_DIR", &target)
            .env_remove("PYO3_PYTHON")
            .env_remove("VIRTUAL_ENV"),
        "pip install <checkout>",
    );
    let pyreload = venv.join("bin/pyreload");
    assert!(pyreload.exists(), "pip installed no {}", pyreload.display());

    // Run from the venv without activating it, as its own scripts are.
    sandbox.write("ver.py", "import sys\nprint(sys.version)\nprint(sys.prefix)\n");
    let out = run_ok(
        Command::new(&pyreload)
            .args(["run", "ver.py"])
            .current_dir(sandbox.path())
            .env("PYRELOAD_RUNTIME_DIR", sandbox.runtime_dir())
            .env_remove("VIRTUAL_ENV"),
        "venv/bin/pyreload run ver.py",
    );
    let mut lines = out.lines();
    let reported = lines.next().unwrap_or_default();
    assert!(reported.starts_with(&format!("{version}.")), "sys.version {reported}");
    assert_eq!(
        Path::new(lines.next().unwrap_or_default()),
        venv.canonicalize().unwrap(),
        "not the venv's sys.prefix"
    );

    // And it updates the case study: v1 -> v2 under that interpreter.
    let port_file = sandbox.path().join("port");
    let log = sandbox.path().join("server.log");
    let mut server = Command::new(&pyreload)
        .args([
            "run",
            "--name",
            "kvserver",
            "--version",
            "1.0",
            "-m",
            "kvserver",
            "--port",
            "0",
        ])
        .arg("--port-file")
        .arg(&port_file)
        .current_dir(repo().join("case-study/v1"))
        .env("PYRELOAD_RUNTIME_DIR", sandbox.runtime_dir())
        .env_remove("VIRTUAL_ENV")
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::fs::File::create(sandbox.path().join("server.err")).unwrap())
        .spawn()
        .unwrap();
    let logs = || {
        format!(
            "{}{}",
            std::fs::read_to_string(&log).unwrap_or_default(),
            std::fs::read_to_string(sandbox.path().join("server.err")).unwrap_or_default()
        )
    };
    let port: u16 = wait_for_file(&port_file, logs).trim().parse().unwrap();
    let socket = sandbox.runtime_dir().join(format!("{}.sock", server.id()));
    common::wait_until(Duration::from_secs(20), || socket.exists(), logs);
    let ask = |line: &str| common::KvClient::connect(port).ask(line);
    assert_eq!(ask("INCR counter"), "ERR unknown command INCR");
    let apply = Command::new(&pyreload)
        .args(["apply", "--json", "--socket"])
        .arg(&socket)
        .arg(repo().join("specs/v1-to-v2.toml"))
        .env("PYRELOAD_RUNTIME_DIR", sandbox.runtime_dir())
        .output()
        .unwrap();
    let report: serde_json::Value = serde_json::from_slice(&apply.stdout)
        .unwrap_or_else(|e| panic!("apply gave no JSON ({e}): {}\n{}", stderr(&apply), logs()));
    let after = ask("INCR counter");
    let _ = server.kill();
    let _ = server.wait();
    assert_eq!(report["outcome"], "committed", "{report:#}\n{}", logs());
    assert_eq!(after, "VALUE 1", "the new command is live");
}

#[test]
fn another_copy_of_libpython_picked_up_by_the_loader_is_refused() {
    // A copy of the build interpreter's own libpython in another directory,
    // put first by LD_LIBRARY_PATH, as a stray copy in the loader's path
    // would be.
    let sandbox = Sandbox::new();
    let libdir = run_ok(
        Command::new(BUILD_PYTHON).args([
            "-c",
            "import sysconfig; print(sysconfig.get_config_var('LIBDIR') + '/' + sysconfig.get_config_var('INSTSONAME'))",
        ]),
        "find libpython",
    );
    let lib = PathBuf::from(libdir.trim());
    let stray = sandbox.path().join("stray");
    std::fs::create_dir_all(&stray).unwrap();
    std::fs::copy(&lib, stray.join(lib.file_name().unwrap())).unwrap();
    sandbox.write("app.py", "open('ran', 'w').write('ran')\n");
    let out = sandbox
        .pyreload()
        .args(["run", "app.py"])
        .current_dir(sandbox.path())
        .env("LD_LIBRARY_PATH", &stray)
        .output()
        .unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains(&format!(
            "but loaded {}",
            stray.join(lib.file_name().unwrap()).display()
        )),
        "{err}"
    );
    assert!(err.contains("PYO3_PYTHON="), "{err}");
    assert!(!sandbox.path().join("ran").exists(), "the program ran anyway");
}
