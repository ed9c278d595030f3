//! The merge's pairing and rebind list are made while staging, with the
//! program running (src/engine/merge.rs, `pair_ahead`); the commit checks
//! that what they read still holds. These tests change the program at a
//! known point between stage and commit (the update is held at the start
//! of its commit with `PYRELOAD_FAULT=hold:DIR`, and the program's own
//! main thread makes the change meanwhile), then let the commit go.

mod common;

use std::io::Read;

use common::{probe_with_env, Hosted, PhaseHold, Sandbox, PROBE_LOOP};

/// `lib.core`: `wrapped` sits behind a decorator whose closure changes
/// shape from version to version, so the merge replaces it (and re-points
/// what refers to it); `plain` is patched in place.
fn core(version: u32) -> String {
    let deco = if version == 1 {
        "def deco(f):\n    def wrapper(*a):\n        return f(*a)\n    return wrapper\n"
    } else {
        "def deco(f):\n    k = 1\n    def wrapper(*a):\n        return f(*a) * k\n    return wrapper\n"
    };
    format!(
        "{deco}\n@deco\ndef wrapped():\n    return 'wrapped v{version}'\n\n\
         def plain():\n    return 'plain v{version}'\n\n\
         def other():\n    return 'other v{version}'\n"
    )
}

const MAIN: &str = r#"
import sys
import lib.core
import user, keeper

def own():
    return "keeper's own"
"#;

const SPEC: &str = r#"
[update]
name = "core-v2"
to = "2"

[[reload]]
module = "lib.core"
source = "v2/core.py"
"#;

struct Held {
    sandbox: Sandbox,
    program: Hosted,
    hold: PhaseHold,
}

impl Held {
    fn start() -> Held {
        let sandbox = Sandbox::new();
        sandbox.write("lib/__init__.py", "");
        sandbox.write("lib/core.py", &core(1));
        sandbox.write("v2/core.py", &core(2));
        sandbox.write("user.py", "from lib.core import wrapped, plain\n");
        sandbox.write("keeper.py", "from lib.core import wrapped\n");
        sandbox.write("late.py", "from lib.core import wrapped\n");
        sandbox.write("spec.toml", SPEC);
        sandbox.write("main.py", &format!("{MAIN}{PROBE_LOOP}"));
        let hold = PhaseHold::new(&sandbox);
        let program = probe_with_env(&sandbox, &["--version", "1", "main.py"], vec![hold.env()]);
        Held { sandbox, program, hold }
    }

    /// Applies the spec, held at the start of its commit (staged, paired
    /// ahead) while `between` runs in the program, then lets it commit.
    fn apply_with(&mut self, between: &[&str]) -> serde_json::Value {
        self.hold.arm("commit");
        let socket = self.program.socket();
        let mut apply = self
            .sandbox
            .spawn_apply_json(&socket, &self.sandbox.path().join("spec.toml"));
        self.hold.wait_for(&socket, "commit");
        for line in between {
            let answer = self.program.ask(line);
            assert!(!answer.starts_with("raised"), "{line}: {answer}");
        }
        self.hold.release("commit");
        let mut out = String::new();
        apply.stdout.take().unwrap().read_to_string(&mut out).unwrap();
        apply.wait().unwrap();
        let report: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("no report ({e}): {out}"));
        assert_eq!(report["outcome"], "committed", "{report:#}");
        report
    }

    fn ask(&mut self, line: &str) -> String {
        self.program.ask(line)
    }
}

#[test]
fn a_copy_the_program_rebinds_after_staging_keeps_its_own_binding() {
    let mut p = Held::start();
    // While the update waits to commit: keeper rebinds its copy, and a
    // module loaded only now copies the old object.
    let report = p.apply_with(&["setattr(keeper, 'wrapped', own) or 'ok'", "__import__('late') and 'ok'"]);
    // Nothing the pairing read changed, so the commit used it; the
    // rebind list found the copies made before staging.
    assert_eq!(report["merge_ahead"]["reused"], true, "{report:#}");
    assert_eq!(report["merge_ahead"]["stale"], 0, "{report:#}");
    assert!(
        report["merge_ahead"]["rebind_entries"].as_u64().unwrap() >= 2,
        "{report:#}"
    );
    assert_eq!(p.ask("lib.core.wrapped()"), "'wrapped v2'");
    // The copy made before staging followed the replacement.
    assert_eq!(p.ask("user.wrapped()"), "'wrapped v2'");
    assert_eq!(p.ask("user.wrapped is lib.core.wrapped"), "True");
    // The importer's own binding, made after staging, was kept.
    assert_eq!(p.ask("keeper.wrapped()"), "\"keeper's own\"");
    // A module loaded after staging was looked through in the commit.
    assert_eq!(p.ask("sys.modules['late'].wrapped is lib.core.wrapped"), "True");
    // A function patched in place, as always.
    assert_eq!(p.ask("user.plain()"), "'plain v2'");
    let rebound = report["modules"][0]["rebound"].to_string();
    assert!(
        rebound.contains("user.wrapped") && rebound.contains("late.wrapped"),
        "{report:#}"
    );
    assert!(!rebound.contains("keeper.wrapped"), "{report:#}");
}

#[test]
fn a_global_the_program_changes_after_staging_makes_the_commit_pair_again() {
    let mut p = Held::start();
    // While the update waits to commit, the program replaces a function
    // of the module being reloaded with one of its own.
    let report = p.apply_with(&["setattr(lib.core, 'plain', own) or 'ok'"]);
    assert_eq!(report["merge_ahead"]["reused"], false, "{report:#}");
    assert!(report["merge_ahead"]["stale"].as_u64().unwrap() >= 1, "{report:#}");
    // The merge followed the rule for what the module held at the commit:
    // a function from elsewhere is an imported name, and takes the new
    // source's `plain`.
    assert_eq!(p.ask("lib.core.plain()"), "'plain v2'");
    assert_eq!(p.ask("lib.core.other()"), "'other v2'");
    assert_eq!(p.ask("lib.core.wrapped()"), "'wrapped v2'");
    assert_eq!(p.ask("user.wrapped is lib.core.wrapped"), "True");
}

/// The walk for suspended generators is made while staging too, and the
/// check in the stopped world looks only at what is newer: a generator the
/// program starts after staging still holds the update back.
#[test]
fn a_generator_suspended_after_staging_still_blocks_the_commit() {
    let sandbox = Sandbox::new();
    let gen = |v: u32| format!("def ticks():\n    yield {v}\n    yield {v}\n");
    sandbox.write("lib/__init__.py", "");
    sandbox.write("lib/gen.py", &gen(1));
    sandbox.write("v2/gen.py", &gen(2));
    sandbox.write(
        "spec.toml",
        "[update]\nname = \"gen-v2\"\nto = \"2\"\n\n[[reload]]\nmodule = \"lib.gen\"\nsource = \"v2/gen.py\"\n\n\
         [safe_point]\ntimeout_ms = 1500\n",
    );
    sandbox.write("main.py", &format!("import sys\nimport lib.gen\n{PROBE_LOOP}"));
    let hold = PhaseHold::new(&sandbox);
    let mut program = probe_with_env(&sandbox, &["--version", "1", "main.py"], vec![hold.env()]);
    hold.arm("commit");
    let socket = program.socket();
    let mut apply = sandbox.spawn_apply_json(&socket, &sandbox.path().join("spec.toml"));
    hold.wait_for(&socket, "commit");
    // Staged and walked; now a generator of the changed code is suspended.
    assert_eq!(
        program.ask("[globals().__setitem__('g', lib.gen.ticks()), next(g)][1]"),
        "1"
    );
    hold.release("commit");
    let mut out = String::new();
    apply.stdout.take().unwrap().read_to_string(&mut out).unwrap();
    apply.wait().unwrap();
    let report: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("no report ({e}): {out}"));
    assert_eq!(report["outcome"], "refused", "{report:#}");
    assert!(out.contains("suspended"), "{report:#}");
    // The generator ran on, on the old code.
    assert_eq!(program.ask("next(g)"), "1");
}
