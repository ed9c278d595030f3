//! Code shipped in place (`pip install -U`, `git pull`, an editor): `diff`
//! shows what the program runs against the file on disk, and `new
//! --running` drafts a spec from the loaded modules whose files changed.
//!
//! The library test uses a real package from PyPI, more-itertools, in two
//! released versions with real code differences (10.1.0 -> 10.2.0 adds
//! `filter_map`, `iter_suppress` and `classify_unique`, and rewrites
//! `first`, `time_limited` and the combinatorics helpers). Its wheels are
//! downloaded once into `target/test-pypi/`; later runs install from there
//! offline.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{probe, repo, stderr, stdout, Hosted, Launch, Sandbox, PROBE_LOOP};

/// The two versions, as pip pins them.
const OLD: &str = "more-itertools==10.1.0";
const NEW: &str = "more-itertools==10.2.0";

/// The `[[reload]]` modules of a spec, in order.
fn reloads(spec: &str) -> Vec<String> {
    let value: toml::Value = toml::from_str(spec).unwrap_or_else(|e| panic!("{e}\n{spec}"));
    value
        .get("reload")
        .and_then(|r| r.as_array())
        .map(|r| r.iter().map(|m| m["module"].as_str().unwrap().to_string()).collect())
        .unwrap_or_default()
}

/// The draft's TODOs decided the way its comments say: versions named, and
/// any tables built at import taken from the new source.
fn decide(draft: &str, from: &str, to: &str) -> String {
    let decided = draft
        .replace("name = \"TODO: name this update\"", "name = \"in-place\"")
        .replace(
            "from = \"TODO: the version the program runs now\"",
            &format!("from = \"{from}\""),
        )
        .replace(
            "to = \"TODO: the version this update brings\"",
            &format!("to = \"{to}\""),
        )
        .replace("# reset = [", "reset = [");
    let open: Vec<&str> = decided
        .lines()
        .filter(|l| l.contains("TODO") && !l.trim_start().starts_with('#'))
        .collect();
    assert!(open.is_empty(), "undecided TODOs: {open:?}\n{decided}");
    decided
}

#[test]
fn diff_compares_what_runs_with_a_file_changed_in_place_and_follows_applies_and_rollbacks() {
    let sandbox = Sandbox::new();
    sandbox.write("shop/__init__.py", "");
    sandbox.write("shop/prices.py", "def price():\n    return 100\n");
    sandbox.write("shop/tax.py", "RATE = 10\n");
    // Both get a .pyc; prices is imported from its (valid) .pyc, so only
    // the recorder reads its source. tax then changes size: its .pyc is
    // stale and the interpreter compiles the source instead.
    let compiled = Command::new(common::BUILD_PYTHON)
        .args(["-m", "compileall", "-q", "shop"])
        .current_dir(sandbox.path())
        .output()
        .unwrap();
    assert!(compiled.status.success(), "{}", stderr(&compiled));
    sandbox.write("shop/tax.py", "RATE = 20  # loaded\n");
    // Loaded from its bytecode only: no source was ever read.
    sandbox.write("legacy_src.py", "def old():\n    return 1\n");
    let compiled = Command::new(common::BUILD_PYTHON)
        .args([
            "-c",
            "import py_compile; py_compile.compile('legacy_src.py', cfile='legacy.pyc')",
        ])
        .current_dir(sandbox.path())
        .output()
        .unwrap();
    assert!(compiled.status.success(), "{}", stderr(&compiled));
    std::fs::remove_file(sandbox.path().join("legacy_src.py")).unwrap();
    sandbox.write("legacy_v2.py", "def old():\n    return 2\n");
    sandbox.write(
        "app.py",
        &format!("import os, sys\nimport shop.prices, shop.tax\nimport legacy\n{PROBE_LOOP}"),
    );
    let mut program = probe(&sandbox, &["--version", "1", "app.py"]);
    let socket = program.socket();
    let socket = socket.to_str().unwrap();
    // A spec without `source`: the new version is the module's file.
    let spec = |to: &str| {
        let path = sandbox.write(
            &format!("to-{to}.toml"),
            &format!("[update]\nname = \"prices\"\nto = \"{to}\"\n\n[[reload]]\nmodule = \"shop.prices\"\n"),
        );
        path.to_str().unwrap().to_string()
    };
    let (to_2, to_3) = (spec("2"), spec("3"));
    let diff = |sandbox: &Sandbox, spec: &str| {
        let out = sandbox.run(&["diff", "--socket", socket, spec]);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        stdout(&out)
    };

    // Unchanged on disk: nothing to show, and that is known.
    assert_eq!(diff(&sandbox, &to_2), "shop.prices: no change\n");

    // Edited in place: the diff is from what runs to what is on disk.
    sandbox.write("shop/prices.py", "def price():\n    return 120\n");
    let text = diff(&sandbox, &to_2);
    assert!(text.contains("prices.py (running)"), "{text}");
    assert!(text.contains("\n-    return 100\n+    return 120\n"), "{text}");
    assert_eq!(program.ask("shop.prices.price()"), "100", "the diff changed nothing");

    // After the apply, what runs is what it loaded (the next update's diff
    // starts from it).
    let out = sandbox.run(&["apply", "--socket", socket, &to_2]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(program.ask("shop.prices.price()"), "120");
    assert_eq!(diff(&sandbox, &to_3), "shop.prices: no change\n");
    sandbox.write("shop/prices.py", "def price():\n    return 150\n");
    let text = diff(&sandbox, &to_3);
    assert!(text.contains("\n-    return 120\n+    return 150\n"), "{text}");

    // Rolled back, it runs what it imported again.
    let out = sandbox.run(&["rollback", "--socket", socket]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(program.ask("shop.prices.price()"), "100");
    let text = diff(&sandbox, &to_2);
    assert!(text.contains("\n-    return 100\n+    return 150\n"), "{text}");

    // From the source the interpreter compiled, not from its stale .pyc.
    assert_eq!(program.ask("shop.tax.RATE"), "20");
    sandbox.write("shop/tax.py", "RATE = 30\n");
    let tax = sandbox.write(
        "tax.toml",
        "[update]\nname = \"tax\"\nto = \"3\"\n\n[[reload]]\nmodule = \"shop.tax\"\n",
    );
    let out = sandbox.run(&["diff", "--socket", socket, tax.to_str().unwrap()]);
    assert!(
        stdout(&out).ends_with("\n-RATE = 20  # loaded\n+RATE = 30\n"),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );

    // Where the running source cannot be known, it says so, never "no change".
    let unknown = sandbox.write(
        "legacy.toml",
        "[update]\nname = \"legacy\"\nto = \"3\"\n\n[[reload]]\nmodule = \"legacy\"\nsource = \"legacy_v2.py\"\n",
    );
    let out = sandbox.run(&["diff", "--socket", socket, unknown.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.starts_with("legacy: the source it runs is not known, so its change cannot be shown:"),
        "{text}"
    );
    assert!(!text.contains("no change"), "{text}");
    // A frozen module (3.11 and later freeze `os`) runs code built into
    // the interpreter, whatever its file says.
    if program.ask("os.__spec__.origin") == "'frozen'" {
        let frozen = sandbox.write(
            "os.toml",
            "[update]\nname = \"os\"\nto = \"3\"\n\n[[reload]]\nmodule = \"os\"\n",
        );
        let out = sandbox.run(&["diff", "--socket", socket, frozen.to_str().unwrap()]);
        assert_eq!(
            stdout(&out).lines().next(),
            Some(
                "os: the source it runs is not known, so its change cannot be shown: it is frozen: the \
                 interpreter runs code built into it, not its file"
            ),
            "{}",
            stderr(&out)
        );
    }
    drop(program);
}

/// Wheels of both versions in `target/test-pypi/`, downloaded once. Test
/// processes running at the same time take turns through a file lock, and
/// a download lands in a temporary directory renamed into place, so an
/// interrupted one leaves nothing half-written behind.
fn wheels() -> PathBuf {
    let root = repo().join("target/test-pypi");
    let dir = root.join("more-itertools");
    std::fs::create_dir_all(&root).unwrap();
    let lock = std::fs::File::create(root.join(".lock")).unwrap();
    let _held = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
        .unwrap_or_else(|(_, e)| panic!("could not lock {}: {e}", root.display()));
    if !dir.is_dir() {
        let partial = tempfile::Builder::new().prefix(".download-").tempdir_in(&root).unwrap();
        for pin in [OLD, NEW] {
            let out = Command::new("python3")
                .args([
                    "-m",
                    "pip",
                    "download",
                    "--disable-pip-version-check",
                    "--no-deps",
                    "-d",
                ])
                .arg(partial.path())
                .arg(pin)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "could not download {pin} from PyPI (needed once, then cached in {}):\n{}",
                dir.display(),
                stderr(&out)
            );
        }
        std::fs::rename(partial.keep(), &dir).unwrap();
    }
    dir
}

/// `pip install` into `venv` from the cached wheels only (offline).
fn pip_install(venv: &Path, wheels: &Path, args: &[&str]) {
    let out = Command::new("python3")
        .args(["-m", "pip", "--disable-pip-version-check", "--python"])
        .arg(venv.join("bin/python"))
        .args(["install", "--no-index", "--find-links"])
        .arg(wheels)
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "pip install {args:?} failed:\n{}", stderr(&out));
}

#[test]
fn a_pip_upgrade_in_place_is_diffed_drafted_and_applied() {
    let wheels = wheels();
    let sandbox = Sandbox::new();
    let venv = sandbox.path().join("venv");
    common::make_venv(&venv);
    pip_install(&venv, &wheels, &[OLD]);
    // pip compiles every module, so the program imports .pyc files and
    // only the recorder reads the sources.
    let cache = std::fs::read_dir(venv.join("lib"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path()
        .join("site-packages/more_itertools/__pycache__");
    assert!(
        std::fs::read_dir(&cache)
            .map(|d| d
                .flatten()
                .any(|e| e.file_name().to_string_lossy().starts_with("more.")))
            .unwrap_or(false),
        "no .pyc in {}",
        cache.display()
    );

    sandbox.write("app.py", &format!("import sys\nimport more_itertools\n{PROBE_LOOP}"));
    let mut program = Hosted::start(
        &sandbox,
        Launch {
            args: ["--version", "10.1.0", "app.py"].map(String::from).to_vec(),
            cwd: sandbox.path().to_path_buf(),
            interactive: true,
            env: vec![
                ("VIRTUAL_ENV", venv.display().to_string()),
                (
                    "PATH",
                    format!("{}:{}", venv.join("bin").display(), std::env::var("PATH").unwrap()),
                ),
            ],
        },
    );
    program.expect_line("ready");
    let pid = program.pid().to_string();
    assert_eq!(
        program.ask("more_itertools.__file__.startswith(sys.prefix) and sys.prefix != sys.base_prefix"),
        "True",
        "the library comes from the test venv"
    );
    assert_eq!(program.ask("more_itertools.__version__"), "'10.1.0'");
    assert_eq!(program.ask("hasattr(more_itertools, 'filter_map')"), "False");
    assert_eq!(
        program.ask("globals().setdefault('held_first', more_itertools.first) and None"),
        "None"
    );
    assert_eq!(program.ask("'StopIteration' in held_first.__code__.co_names"), "True");

    pip_install(&venv, &wheels, &["-U", NEW]);

    // `diff` sees the upgrade (the program loaded these from .pyc files;
    // pip has replaced both the sources and the .pyc files since).
    let spec = sandbox.write(
        "by-hand.toml",
        "[update]\nname = \"by-hand\"\nto = \"10.2.0\"\n\n\
         [[reload]]\nmodule = \"more_itertools.recipes\"\n\n\
         [[reload]]\nmodule = \"more_itertools.more\"\n\n\
         [[reload]]\nmodule = \"more_itertools\"\n",
    );
    let out = sandbox.run(&["diff", "--pid", &pid, spec.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("more_itertools/more.py (running)"), "{text}");
    assert!(text.contains("\n+def filter_map(func, iterable):\n"), "{text}");
    assert!(
        text.contains("\n-__version__ = '10.1.0'\n+__version__ = '10.2.0'\n"),
        "{text}"
    );
    assert!(!text.contains("no change") && !text.contains("not known"), "{text}");

    // `new --running` drafts exactly the loaded modules that changed, in
    // dependency order (more imports recipes; the package imports both),
    // from their files.
    let draft_path = sandbox.path().join("up.toml");
    let out = sandbox.run(&["new", "--running", "--pid", &pid, "-o", draft_path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let draft = std::fs::read_to_string(&draft_path).unwrap();
    assert_eq!(
        reloads(&draft),
        ["more_itertools.recipes", "more_itertools.more", "more_itertools"],
        "{draft}"
    );
    assert!(
        !draft.contains("new = true") && !draft.contains("\nsource ="),
        "{draft}"
    );
    assert!(draft.contains("# functions: "), "{draft}");
    assert!(draft.contains("added filter_map"), "{draft}");

    // Decided and applied, the program runs 10.2.0.
    std::fs::write(&draft_path, decide(&draft, "10.1.0", "10.2.0")).unwrap();
    let out = sandbox.run(&["apply", "--pid", &pid, draft_path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}\n{}", stderr(&out), stdout(&out));
    assert_eq!(program.ask("'filter_map' in more_itertools.more.__all__"), "True");
    // A module's own dunder constants follow the update like any constant.
    assert_eq!(program.ask("more_itertools.__version__"), "'10.2.0'");
    // A reference taken before the update runs 10.2.0's `first`, which no
    // longer goes through `next()` and `StopIteration`.
    assert_eq!(program.ask("held_first is more_itertools.first"), "True");
    assert_eq!(program.ask("'StopIteration' in held_first.__code__.co_names"), "False");
    assert_eq!(
        program.ask("list(more_itertools.filter_map(lambda x: x * 2 if x else None, [0, 1, 2]))"),
        "[2, 4]"
    );
    assert_eq!(
        program.ask("more_itertools.first([], 'empty'), more_itertools.first([7])"),
        "('empty', 7)"
    );

    // What runs now is what is on disk.
    let next = std::fs::read_to_string(&spec)
        .unwrap()
        .replace("to = \"10.2.0\"", "to = \"next\"");
    let next = sandbox.write("next.toml", &next);
    let out = sandbox.run(&["diff", "--pid", &pid, next.to_str().unwrap()]);
    assert_eq!(
        stdout(&out),
        "more_itertools.recipes: no change\nmore_itertools.more: no change\nmore_itertools: no change\n"
    );
    let out = sandbox.run(&["new", "--running", "--pid", &pid]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(reloads(&stdout(&out)), Vec::<String>::new(), "{}", stdout(&out));
}

#[test]
fn new_running_drafts_only_loaded_modules_and_the_new_ones_they_import() {
    let sandbox = Sandbox::new();
    sandbox.write("pkg/__init__.py", "");
    sandbox.write("pkg/mod.py", "def f():\n    return 1\n");
    sandbox.write("pkg/same.py", "X = 1\n");
    sandbox.write("pkg/unloaded.py", "def u():\n    return 1\n");
    sandbox.write("app.py", &format!("import sys\nimport pkg.mod, pkg.same\n{PROBE_LOOP}"));
    let mut program = probe(&sandbox, &["app.py"]);
    let socket = program.socket();

    // In place: a changed module now imports a new module of its package,
    // which imports a new top-level module next to the package. Files the
    // program never imported change too, or appear, and stay out.
    sandbox.write(
        "pkg/mod.py",
        "from pkg import helper\n\ndef f():\n    return helper.g()\n",
    );
    sandbox.write("pkg/helper.py", "import util\n\ndef g():\n    return util.TWO\n");
    sandbox.write("util.py", "TWO = 2\n");
    sandbox.write("pkg/unloaded.py", "def u():\n    return 2\n");
    sandbox.write("pkg/__main__.py", "import pkg.mod\n");
    sandbox.write("pkg/never.py", "Y = 1\n");
    // Run from the sandbox: `source` paths are relative to where the draft
    // goes (here stdout, so the current directory).
    let out = sandbox
        .pyreload()
        .args(["new", "--running", "--socket", socket.to_str().unwrap()])
        .current_dir(sandbox.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let draft = stdout(&out);
    assert_eq!(reloads(&draft), ["util", "pkg.helper", "pkg.mod"], "{draft}");
    assert!(
        draft.contains("module = \"util\"\nsource = \"util.py\"\nnew = true"),
        "{draft}"
    );

    let draft_path = sandbox.write("up.toml", &decide(&draft, "", "2").replace("from = \"\"\n", ""));
    let out = sandbox.run(&[
        "apply",
        "--socket",
        socket.to_str().unwrap(),
        draft_path.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(program.ask("pkg.mod.f()"), "2");
    assert_eq!(program.ask("'pkg.unloaded' in sys.modules"), "False");
}

#[test]
fn new_from_trees_drafts_only_new_modules_that_changed_ones_import() {
    let sandbox = Sandbox::new();
    sandbox.write("old/lib/__init__.py", "");
    sandbox.write("old/lib/core.py", "def f():\n    return 1\n");
    sandbox.write("new/lib/__init__.py", "");
    sandbox.write(
        "new/lib/core.py",
        "from lib import extra\n\ndef f():\n    return extra.E\n",
    );
    sandbox.write("new/lib/extra.py", "E = 2\n");
    // Never imported by the program: a package's __main__, its tests, and
    // (`--to` pointing at site-packages) every other package next to it.
    sandbox.write("new/lib/__main__.py", "import lib.core\n");
    sandbox.write("new/lib/tests/__init__.py", "");
    sandbox.write("new/lib/tests/test_core.py", "import lib.core\n");
    sandbox.write("new/otherpkg/__init__.py", "import json\n");
    sandbox.write("new/six.py", "X = 1\n");
    let out = sandbox.run(&[
        "new",
        "--from",
        sandbox.path().join("old").to_str().unwrap(),
        "--to",
        sandbox.path().join("new").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let draft = stdout(&out);
    assert_eq!(reloads(&draft), ["lib.extra", "lib.core"], "{draft}");
    assert!(
        draft.contains(
            "# New in the tree but imported by no changed module, so left out: lib.__main__, lib.tests, \
             lib.tests.test_core, otherpkg, six."
        ),
        "{draft}"
    );
}
