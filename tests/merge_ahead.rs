//! The merge's pairing and rebind list are made while staging, with the
//! program running (src/engine/merge.rs, `pair_ahead`); the commit checks
//! that what they read still holds. These tests change the program at a
//! known point between stage and commit (the update is held at the start
//! of its commit with `PYRELOAD_FAULT=hold:DIR`, and the program's own
//! main thread makes the change meanwhile), then let the commit go.
//!
//! The merge's writes are planned while staging too (`merge_ahead.planned`):
//! the pause checks that nothing the plan read or writes changed since and
//! makes the planned writes, each journaled; a change the program made in
//! between makes the commit merge in the pause instead (`plan_stale`).

mod common;

use std::io::Read;

use common::{probe_with_env, Hosted, PhaseHold, Sandbox, PROBE_LOOP};

/// `lib.core`: `wrapped` sits behind a decorator whose closure changes
/// shape from version to version, so the merge replaces it (and re-points
/// what refers to it); `plain` is patched in place; `dflt` has defaults and
/// attributes of its own, and `C` a constant and a method, which the new
/// version changes.
fn core(version: u32) -> String {
    let deco = if version == 1 {
        "def deco(f):\n    def wrapper(*a):\n        return f(*a)\n    return wrapper\n"
    } else {
        "def deco(f):\n    k = 1\n    def wrapper(*a):\n        return f(*a) * k\n    return wrapper\n"
    };
    format!(
        "{deco}\n@deco\ndef wrapped():\n    return 'wrapped v{version}'\n\n\
         def plain():\n    return 'plain v{version}'\n\n\
         def other():\n    return 'other v{version}'\n\n\
         def dflt(x={version}):\n    return ('dflt v{version}', x)\n\n\
         dflt.tag = 'v{version}'\n\n\
         class C:\n    limit = {version}\n\n    def method(self):\n        return 'method v{version}'\n"
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
    // Neither change touched what the planned writes read or write.
    assert_eq!(report["merge_ahead"]["planned"], true, "{report:#}");
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
    assert_eq!(report["merge_ahead"]["planned"], false, "{report:#}");
    assert_eq!(report["merge_ahead"]["plan_stale"], true, "{report:#}");
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

/// What the version-2 merge leaves, whichever way it was made.
fn assert_v2(p: &mut Held) {
    assert_eq!(p.ask("lib.core.plain()"), "'plain v2'");
    assert_eq!(p.ask("lib.core.wrapped()"), "'wrapped v2'");
    assert_eq!(p.ask("user.wrapped is lib.core.wrapped"), "True");
    assert_eq!(p.ask("c0.method()"), "'method v2'");
    assert_eq!(p.ask("lib.core.dflt.tag"), "'v2'");
}

#[test]
fn the_planned_writes_are_made_in_the_pause_when_nothing_changed() {
    let mut p = Held::start();
    assert_eq!(p.ask("globals().__setitem__('c0', lib.core.C()) or 'ok'"), "'ok'");
    let report = p.apply_with(&[]);
    let ahead = &report["merge_ahead"];
    assert_eq!(ahead["reused"], true, "{report:#}");
    assert_eq!(ahead["planned"], true, "{report:#}");
    assert_eq!(ahead["plan_stale"], false, "{report:#}");
    assert!(ahead["planned_writes"].as_u64().unwrap() >= 6, "{report:#}");
    assert_v2(&mut p);
    assert_eq!(p.ask("lib.core.C.limit"), "2");
    assert_eq!(p.ask("lib.core.dflt()"), "('dflt v2', 2)");
    // The report says what changed, as a merge in the pause does.
    let changed = report["modules"][0]["functions"]["changed"].to_string();
    assert!(changed.contains("plain") && changed.contains("C.method"), "{report:#}");
    assert_eq!(
        report["modules"][0]["globals"]["updated"],
        serde_json::json!([]),
        "{report:#}"
    );
}

/// The program rebinds a class attribute after staging, from a constant
/// to data: the plan (which set the new constant) no longer holds, and
/// the merge in the pause keeps the program's data, as the rule says.
#[test]
fn a_class_attribute_the_program_rebinds_after_staging_invalidates_the_plan() {
    let mut p = Held::start();
    assert_eq!(p.ask("globals().__setitem__('c0', lib.core.C()) or 'ok'"), "'ok'");
    let report = p.apply_with(&["setattr(lib.core.C, 'limit', [7]) or 'ok'"]);
    let ahead = &report["merge_ahead"];
    assert_eq!(ahead["planned"], false, "{report:#}");
    assert_eq!(ahead["plan_stale"], true, "{report:#}");
    assert_v2(&mut p);
    assert_eq!(p.ask("lib.core.C.limit"), "[7]");
    // A class attribute the new version does not name, added after
    // staging, invalidates the plan too (the class changed), though
    // not the pairing.
    let mut q = Held::start();
    assert_eq!(q.ask("globals().__setitem__('c0', lib.core.C()) or 'ok'"), "'ok'");
    let report = q.apply_with(&["setattr(lib.core.C, 'extra', 1) or 'ok'"]);
    assert_eq!(report["merge_ahead"]["reused"], true, "{report:#}");
    assert_eq!(report["merge_ahead"]["plan_stale"], true, "{report:#}");
    assert_v2(&mut q);
    assert_eq!(q.ask("lib.core.C.extra"), "1");
}

/// The program changes a function after staging: the pairing still holds,
/// the plan does not. An attribute set on the function is kept by the
/// merge in the pause (the plan, made before, merged the function's
/// `__dict__` without it); new `__defaults__` give way to the new source's.
#[test]
fn a_function_the_program_changes_after_staging_invalidates_the_plan() {
    for (change, check, expected) in [
        ("setattr(lib.core.dflt, 'mine', 1) or 'ok'", "lib.core.dflt.mine", "1"),
        (
            "setattr(lib.core.dflt, '__defaults__', (5,)) or 'ok'",
            "lib.core.dflt()",
            "('dflt v2', 2)",
        ),
    ] {
        let mut p = Held::start();
        assert_eq!(p.ask("globals().__setitem__('c0', lib.core.C()) or 'ok'"), "'ok'");
        let report = p.apply_with(&[change]);
        let ahead = &report["merge_ahead"];
        assert_eq!(ahead["reused"], true, "{change}: {report:#}");
        assert_eq!(ahead["stale"], 0, "{change}: {report:#}");
        assert_eq!(ahead["planned"], false, "{change}: {report:#}");
        assert_eq!(ahead["plan_stale"], true, "{change}: {report:#}");
        assert_v2(&mut p);
        assert_eq!(p.ask(check), expected, "{change}");
    }
}

/// What version 1 was, object for object.
const V1_STATE: &str = "(lib.core.plain(), lib.core.wrapped(), user.wrapped is lib.core.wrapped, \
     keeper.wrapped is lib.core.wrapped, c0.method(), type(c0) is lib.core.C, C_id == id(lib.core.C), \
     lib.core.C.limit, lib.core.dflt(), lib.core.dflt.tag, dflt_id == id(lib.core.dflt), \
     sorted(vars(lib.core.dflt)))";

/// Keeps an instance of the class and the ids of what version 1 holds, and
/// says what version 1 is ([`V1_STATE`]).
fn v1_state(p: &mut Held) -> String {
    for line in [
        "globals().__setitem__('c0', lib.core.C()) or 'ok'",
        "globals().__setitem__('C_id', id(lib.core.C)) or 'ok'",
        "globals().__setitem__('dflt_id', id(lib.core.dflt)) or 'ok'",
    ] {
        assert_eq!(p.ask(line), "'ok'");
    }
    p.ask(V1_STATE)
}

/// A planned merge is journaled as a merge in the pause is: `pyreload
/// rollback` restores every function, class and copy as it was.
#[test]
fn rollback_after_a_planned_merge_restores_everything() {
    let mut p = Held::start();
    let before = v1_state(&mut p);
    let report = p.apply_with(&[]);
    assert_eq!(report["merge_ahead"]["planned"], true, "{report:#}");
    assert_v2(&mut p);
    let out = p
        .sandbox
        .run(&["rollback", "--socket", p.program.socket().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", p.sandbox.transcript());
    assert_eq!(p.ask(V1_STATE), before);
    assert_eq!(p.ask("lib.core.plain()"), "'plain v1'");
}

/// A commit whose `[check] after` fails is undone in the pause, planned
/// writes and all.
#[test]
fn a_failed_check_after_a_planned_merge_rolls_everything_back() {
    let mut p = Held::start();
    let before = v1_state(&mut p);
    p.sandbox.write(
        "spec.toml",
        &format!("{SPEC}\n[check]\nafter = \"lib.core.plain() == 'not this'\"\n"),
    );
    let (_, report) = p.sandbox.apply_json(&p.program, &p.sandbox.path().join("spec.toml"));
    assert_eq!(report["outcome"], "rolled_back", "{report:#}");
    assert_eq!(report["merge_ahead"]["planned"], true, "{report:#}");
    assert_eq!(p.ask(V1_STATE), before);
}
