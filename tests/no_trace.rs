//! A refused, cancelled or rolled-back update, `check` and `diff` leave no
//! trace in the program's modules: the modules only the update needs
//! (transformer modules, submodules its expressions name, new dependencies
//! of the new code) join `sys.modules` and their package only when it
//! commits, and leave again when it is rolled back. So a user who fixes a
//! file after a failed try gets the fixed file on the next apply.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{probe, status, wait_until, Hosted, Sandbox, PROBE_LOOP};

const MAIN: &str = "import sys\nimport app.core\nitems = [app.core.Item(n) for n in (1, 2, 3)]\n";

const CORE_V1: &str = "class Item:\n    def __init__(self, n):\n        self.n = n\n";

const CORE_V2: &str = "class Item:\n    def __init__(self, n):\n        self.n = n\n        self.m = n * 10\n\n    def total(self):\n        return self.n + self.m\n";

/// A transformer that fails, and on the way replaces its own file with the
/// fixed version, so that the traceback is formatted while the file on
/// disk no longer holds the line that ran.
const MIGRATE_BROKEN: &str = r#"import pathlib

FIXED = pathlib.Path(__file__).with_name("migrate_fixed.txt").read_text()


def fix(item):
    pathlib.Path(__file__).write_text(FIXED)
    raise ValueError("the broken transformer ran")


def unfix(item):
    del item.m
"#;

const MIGRATE_FIXED: &str = r#"def fix(item):
    item.m = item.n * 10


def unfix(item):
    del item.m
"#;

const TRANSFORM_SPEC: &str = r#"
[update]
name = "v2"
from = "1"
to = "2"

[[reload]]
module = "app.core"
source = "new/core.py"

[[transform]]
class = "app.core.Item"
function = "app.migrate.fix"
reverse = "app.migrate.unfix"
"#;

fn start(sandbox: &Sandbox) -> Hosted {
    sandbox.write("app/__init__.py", "");
    sandbox.write("app/core.py", CORE_V1);
    sandbox.write("new/core.py", CORE_V2);
    sandbox.write("main.py", &format!("{MAIN}{PROBE_LOOP}"));
    probe(sandbox, &["--version", "1", "main.py"])
}

fn apply(sandbox: &Sandbox, p: &Hosted, spec: &Path) -> (i32, serde_json::Value) {
    sandbox.apply_json(p, spec)
}

fn run(sandbox: &Sandbox, p: &Hosted, args: &[&str], spec: &Path) -> std::process::Output {
    let socket = p.socket();
    let mut all = vec![args[0], "--socket", socket.to_str().unwrap()];
    all.extend(&args[1..]);
    all.push(spec.to_str().unwrap());
    sandbox.run(&all)
}

fn causes(report: &serde_json::Value) -> String {
    report["problem"]["causes"]
        .as_array()
        .map(|c| c.iter().filter_map(|l| l.as_str()).collect::<Vec<_>>().join("\n"))
        .unwrap_or_default()
}

#[test]
fn a_fixed_transformer_is_read_afresh_after_a_failed_apply_and_commits() {
    let sandbox = Sandbox::new();
    let mut p = start(&sandbox);
    sandbox.write("app/migrate.py", MIGRATE_BROKEN);
    sandbox.write("app/migrate_fixed.txt", MIGRATE_FIXED);
    let spec = sandbox.write("up.toml", TRANSFORM_SPEC);
    let before = p.module_state();

    let (code, report) = apply(&sandbox, &p, &spec);
    assert_eq!(
        (code, report["outcome"].as_str()),
        (1, Some("rolled_back")),
        "{report:#}"
    );
    let traceback = causes(&report);
    assert!(
        traceback.contains(r#"raise ValueError("the broken transformer ran")"#),
        "the traceback does not show the line that ran (the file was fixed since):\n{traceback}"
    );
    assert!(
        !traceback.contains("item.m = item.n * 10"),
        "the traceback shows a line of the fixed file, which never ran:\n{traceback}"
    );
    p.module_state().assert_same(&before, "a rolled-back update");
    assert_eq!(p.ask("[hasattr(i, 'm') for i in items]"), "[False, False, False]");

    // The transformer rewrote itself: the file on disk is fixed now.
    assert_eq!(
        std::fs::read_to_string(sandbox.path().join("app/migrate.py")).unwrap(),
        MIGRATE_FIXED
    );
    let (code, report) = apply(&sandbox, &p, &spec);
    assert_eq!((code, report["outcome"].as_str()), (0, Some("committed")), "{report:#}");
    assert_eq!(p.ask("[i.total() for i in items]"), "[11, 22, 33]");
    let committed = p.module_state();
    assert!(committed.contains("M app.migrate") && committed.contains("A app.migrate"));
    assert_eq!(
        p.ask("sys.modules['app.migrate'] is sys.modules['app'].migrate"),
        "True"
    );

    // A rollback takes the update's modules away with it, as it does
    // modules new in the version.
    let out = sandbox.run(&["rollback", "--socket", p.socket().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", sandbox.transcript());
    assert_eq!(p.ask("[hasattr(i, 'm') for i in items]"), "[False, False, False]");
    p.module_state().assert_same(&before, "an update and its rollback");
}

#[test]
fn check_leaves_nothing_so_apply_runs_the_file_fixed_after_it() {
    let sandbox = Sandbox::new();
    let mut p = start(&sandbox);
    sandbox.write(
        "app/migrate.py",
        "def fix(item):\n    raise ValueError('not fixed yet')\n\n\ndef unfix(item):\n    del item.m\n",
    );
    let spec = sandbox.write("up.toml", TRANSFORM_SPEC);
    let before = p.module_state();

    let out = run(&sandbox, &p, &["check"], &spec);
    assert_eq!(out.status.code(), Some(0), "{}", sandbox.transcript());
    p.module_state().assert_same(&before, "`pyreload check`");
    let out = run(&sandbox, &p, &["diff"], &spec);
    assert_eq!(out.status.code(), Some(0), "{}", sandbox.transcript());
    p.module_state().assert_same(&before, "`pyreload diff`");

    sandbox.write("app/migrate.py", MIGRATE_FIXED);
    let (code, report) = apply(&sandbox, &p, &spec);
    assert_eq!((code, report["outcome"].as_str()), (0, Some("committed")), "{report:#}");
    assert_eq!(p.ask("[i.m for i in items]"), "[10, 20, 30]");
}

#[test]
fn submodules_named_by_a_condition_or_check_stay_out_until_the_commit() {
    let sandbox = Sandbox::new();
    let mut p = start(&sandbox);
    sandbox.write("app/health.py", "def ready():\n    return True\n");
    sandbox.write("app/audit.py", "def ok():\n    return OK\n\n\nOK = False\n");
    let spec = sandbox.write(
        "up.toml",
        r#"
[update]
name = "v2"
from = "1"
to = "2"

[[reload]]
module = "app.core"
source = "new/core.py"

[safe_point]
condition = "app.health.ready()"

[check]
after = "app.audit.ok()"
"#,
    );
    let before = p.module_state();

    for command in ["check", "diff"] {
        let out = run(&sandbox, &p, &[command], &spec);
        assert_eq!(out.status.code(), Some(0), "{}", sandbox.transcript());
        p.module_state().assert_same(&before, command);
    }
    // The condition holds, through the staged `app.health`; the check is
    // false, so the update is rolled back.
    let (code, report) = apply(&sandbox, &p, &spec);
    assert_eq!(
        (code, report["outcome"].as_str()),
        (1, Some("rolled_back")),
        "{report:#}"
    );
    p.module_state()
        .assert_same(&before, "an update whose [check] after was false");

    sandbox.write("app/audit.py", "def ok():\n    return OK\n\n\nOK = True\n");
    let (code, report) = apply(&sandbox, &p, &spec);
    assert_eq!((code, report["outcome"].as_str()), (0, Some("committed")), "{report:#}");
    let now = p.module_state();
    for entry in ["M app.health", "A app.health", "M app.audit", "A app.audit"] {
        assert!(now.contains(entry), "{entry} missing after the commit");
    }
}

#[test]
fn a_new_dependency_of_new_code_that_raises_is_not_left_on_its_package() {
    let sandbox = Sandbox::new();
    let mut p = start(&sandbox);
    sandbox.write("app/extra.py", "HELP = 'extra'\n");
    sandbox.write(
        "new/core.py",
        &format!("from app import extra\n\nBROKEN = True\n{CORE_V2}\nif BROKEN:\n    raise RuntimeError('the new body fails')\n"),
    );
    let spec = sandbox.write(
        "up.toml",
        "[update]\nname = \"v2\"\nfrom = \"1\"\nto = \"2\"\n\n[[reload]]\nmodule = \"app.core\"\nsource = \"new/core.py\"\n",
    );
    let before = p.module_state();
    let (code, report) = apply(&sandbox, &p, &spec);
    assert_eq!((code, report["outcome"].as_str()), (1, Some("refused")), "{report:#}");
    p.module_state()
        .assert_same(&before, "an update whose new module body raised");

    sandbox.write("new/core.py", &format!("from app import extra\n\n{CORE_V2}"));
    let (code, report) = apply(&sandbox, &p, &spec);
    assert_eq!((code, report["outcome"].as_str()), (0, Some("committed")), "{report:#}");
    assert_eq!(
        p.ask("app.core.extra.HELP, sys.modules['app'].extra is app.core.extra"),
        "('extra', True)"
    );
    let out = sandbox.run(&["rollback", "--socket", p.socket().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", sandbox.transcript());
    p.module_state().assert_same(&before, "an update and its rollback");
}

#[test]
fn a_cancelled_update_leaves_the_modules_it_imported_out() {
    let sandbox = Sandbox::new();
    let mut p = start(&sandbox);
    sandbox.write("app/gate.py", "def open():\n    return False\n");
    sandbox.write("app/migrate.py", MIGRATE_FIXED);
    let spec: PathBuf = sandbox.write(
        "up.toml",
        &format!("{TRANSFORM_SPEC}\n[safe_point]\ncondition = \"app.gate.open()\"\ntimeout_ms = 60000\n"),
    );
    let before = p.module_state();
    let socket = p.socket();
    let mut apply = sandbox
        .pyreload()
        .args(["apply", "--socket", socket.to_str().unwrap(), spec.to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_until(
        Duration::from_secs(30),
        || status(&socket)["in_progress"]["phase"] == "wait",
        || "the update never reached its wait".into(),
    );
    apply.kill().unwrap();
    apply.wait().unwrap();
    wait_until(
        Duration::from_secs(30),
        || status(&socket)["in_progress"].is_null(),
        || "the update was never cancelled".into(),
    );
    let history = status(&socket)["history"].clone();
    assert_eq!(
        history.as_array().and_then(|h| h.last()).map(|h| h["outcome"].clone()),
        Some("cancelled".into()),
        "{history:#}"
    );
    p.module_state().assert_same(&before, "a cancelled update");
}

#[test]
fn a_fix_with_the_same_size_and_time_is_not_hidden_by_a_stale_pyc() {
    let sandbox = Sandbox::new();
    let mut p = start(&sandbox);
    // Two versions of one length, saved within the same second: the
    // bytecode cache judges a .pyc by the source's size and mtime only.
    let broken = "def fix(item):\n    raise ValueError('broken')\n\n\ndef unfix(item):\n    del item.m\n";
    let fixed = "def fix(item):\n    item.m = item.n * 10  # ok\n\n\ndef unfix(item):\n    del item.m\n";
    assert_eq!(broken.len(), fixed.len());
    let when = std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let write_at = |text: &str| {
        let path = sandbox.write("app/migrate.py", text);
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(when)
            .unwrap();
        path
    };
    let path = write_at(broken);
    // Python, or anything else, compiled the broken version.
    let compiled = std::process::Command::new(common::BUILD_PYTHON)
        .args([
            "-c",
            "import py_compile, sys; py_compile.compile(sys.argv[1], doraise=True)",
        ])
        .arg(&path)
        .status()
        .unwrap();
    assert!(compiled.success());
    write_at(fixed);
    let spec = sandbox.write("up.toml", TRANSFORM_SPEC);
    let (code, report) = apply(&sandbox, &p, &spec);
    assert_eq!((code, report["outcome"].as_str()), (0, Some("committed")), "{report:#}");
    assert_eq!(p.ask("[i.m for i in items]"), "[10, 20, 30]");
}

#[test]
fn a_transformer_in_a_module_nobody_imported_is_staged_and_its_import_errors_are_shown() {
    let sandbox = Sandbox::new();
    let mut p = start(&sandbox);
    // A top-level module next to the program, which the program never imports.
    sandbox.write("migrations.py", "import app.core\n\nSTEP = 10 // 0\n");
    let spec = sandbox.write("up.toml", &TRANSFORM_SPEC.replace("app.migrate.", "migrations."));
    let before = p.module_state();
    let out = run(&sandbox, &p, &["apply"], &spec);
    assert_eq!(out.status.code(), Some(1), "{}", sandbox.transcript());
    let err = common::stderr(&out);
    assert!(
        err.contains("the module of `migrations.fix` could not be imported: ZeroDivisionError")
            && err.contains("STEP = 10 // 0"),
        "{err}"
    );
    p.module_state()
        .assert_same(&before, "an update whose transformer module raised");

    sandbox.write(
        "migrations.py",
        &format!("import app.core\n\nSTEP = 10\n\n{MIGRATE_FIXED}"),
    );
    let (code, report) = apply(&sandbox, &p, &spec);
    assert_eq!((code, report["outcome"].as_str()), (0, Some("committed")), "{report:#}");
    assert_eq!(
        p.ask("[i.m for i in items], sys.modules['migrations'].STEP"),
        "([10, 20, 30], 10)"
    );
}

#[test]
fn a_new_body_interrupted_at_its_deadline_leaves_its_imports_out() {
    let sandbox = Sandbox::new();
    let mut p = start(&sandbox);
    sandbox.write("app/extra.py", "HELP = 'extra'\n");
    sandbox.write(
        "new/core.py",
        &format!("from app import extra\n\n{CORE_V2}\nwhile True:\n    pass\n"),
    );
    let spec = sandbox.write(
        "up.toml",
        "[update]\nname = \"v2\"\nfrom = \"1\"\nto = \"2\"\n\n[[reload]]\nmodule = \"app.core\"\nsource = \"new/core.py\"\n\n[safe_point]\ncommit_timeout_ms = 300\n",
    );
    let before = p.module_state();
    let (code, report) = apply(&sandbox, &p, &spec);
    assert_eq!((code, report["outcome"].as_str()), (1, Some("refused")), "{report:#}");
    assert!(
        report["problem"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("UpdateTimeout"),
        "{report:#}"
    );
    p.module_state()
        .assert_same(&before, "an update whose new module body was interrupted");
}
