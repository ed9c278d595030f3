//! `[[transform]]`: live data converted to the new representation, in the
//! commit, with every instance's identity kept and every change undone if
//! any transformer fails.

mod common;

use common::{probe, probe_with_env, Hosted, PhaseHold, Sandbox, PROBE_LOOP};

const N: usize = 10_000;

/// Classes both versions of `store` define the same way.
macro_rules! unchanged_classes {
    () => {
        r#"
class Point:
    __slots__ = ("x", "y")
    def __init__(self, x, y):
        self.x, self.y = x, y

class Base:
    def __init__(self, value):
        self.value = value

class Mixed(Base):
    __slots__ = ("mark",)
    def __init__(self, value):
        super().__init__(value)
        self.mark = value * 2
"#
    };
}

const STORE_V1: &str = concat!(
    r#"
class Item:
    def __init__(self, value):
        self.value = value

class Special(Item):
    pass
"#,
    unchanged_classes!(),
    r#"
ITEMS = {i: Item(i) for i in range(10_000)}
SPECIAL = [Special(-1), Special(-2)]
POINTS = [Point(i, i) for i in range(100)]
TOTAL = 41
MIXED = [Base(1), Mixed(2), Base(3), Mixed(4), Base(5), Mixed(6)]
"#
);

const STORE_V2: &str = concat!(
    r#"
class Item:
    def __init__(self, value):
        self.value = value
        self.version = 2
        self.tag = "new"

    def describe(self):
        return f"{self.value}@{self.version}/{self.tag}"

class Special(Item):
    pass
"#,
    unchanged_classes!(),
    r#"
ITEMS = {}
SPECIAL = []
POINTS = []
TOTAL = 0
MIXED = []
"#
);

const MIGRATIONS: &str = r#"
CALLS = [0]

def item_in_place(obj):
    CALLS[0] += 1
    obj.version = 2

def item_state(obj):
    return {"value": obj.value, "version": 2, "tag": "from-state"}

def fail_on_last(obj):
    CALLS[0] += 1
    if CALLS[0] == 10_002:  # 10,000 items and 2 specials
        raise ValueError(f"cannot convert {obj.value}")
    obj.version = 2

def point_swap(p):
    p.x, p.y = p.y * 10, p.x

def total_v2(old):
    return {"total": old}

def no_argument():
    return None

def mixed_fail_on_last(obj):
    CALLS[0] += 1
    obj.value = None
    obj.extra = "added"
    if hasattr(obj, "mark"):
        obj.mark = "changed"
    if CALLS[0] == 6:
        raise ValueError("cannot convert the last one")
"#;

const PROGRAM: &str = r#"
import sys, store, migrations
held = store.ITEMS[1234]
special = store.SPECIAL[0]

def dump():
    items = sorted((k, sorted(vars(v).items())) for k, v in store.ITEMS.items())
    return hash(repr((items, [sorted(vars(s).items()) for s in store.SPECIAL],
                      [(p.x, p.y) for p in store.POINTS], store.TOTAL)))
"#;

fn start(sandbox: &Sandbox) -> Hosted {
    sandbox.write("store.py", STORE_V1);
    sandbox.write("migrations.py", MIGRATIONS);
    sandbox.write("prog.py", &format!("{PROGRAM}{PROBE_LOOP}"));
    let p = probe(sandbox, &["--version", "1", "prog.py"]);
    sandbox.write("store.py", STORE_V2);
    p
}

fn spec(transforms: &str) -> String {
    format!(
        "[update]\nname = \"store-v2\"\nfrom = \"1\"\nto = \"2\"\n\n[[reload]]\nmodule = \"store\"\n\n[safe_point]\ntimeout_ms = 2000\n\n{transforms}"
    )
}

fn apply(sandbox: &Sandbox, p: &Hosted, text: &str) -> (i32, serde_json::Value) {
    let path = sandbox.write("spec.toml", text);
    sandbox.apply_json(p, &path)
}

#[test]
fn an_eager_class_transform_converts_every_instance_in_place_keeping_identity() {
    let sandbox = Sandbox::new();
    let mut p = start(&sandbox);
    let ids = p.ask("(id(held), id(special), id(store.ITEMS[0]))");
    let (code, report) = apply(
        &sandbox,
        &p,
        &spec("[[transform]]\nclass = \"store.Item\"\nfunction = \"migrations.item_in_place\"\ndefaults = { tag = \"'default'\" }\n\n[[transform]]\nglobal = \"store.TOTAL\"\nfunction = \"migrations.total_v2\"\n"),
    );
    assert_eq!(code, 0, "{report:#}");
    let t = &report["transforms"][0];
    assert_eq!(t["kind"], "class");
    assert_eq!(t["instances"], N + 2, "every Item and Special instance, once: {t:#}");
    assert!(
        t["find_ms"].as_f64().unwrap() > 0.0 && t["convert_ms"].as_f64().unwrap() > 0.0,
        "{t:#}"
    );
    assert_eq!(
        p.ask("migrations.CALLS[0]"),
        (N + 2).to_string(),
        "the transformer ran exactly once per instance"
    );
    assert_eq!(
        p.ask("(id(held), id(special), id(store.ITEMS[0]))"),
        ids,
        "identity kept"
    );
    assert_eq!(
        p.ask("held.describe(), special.describe()"),
        "('1234@2/default', '-1@2/default')"
    );
    assert_eq!(
        p.ask("all(v.version == 2 and v.tag == 'default' for v in store.ITEMS.values())"),
        "True"
    );
    assert_eq!(
        p.ask("type(held) is store.Item and isinstance(special, store.Item)"),
        "True"
    );
    assert_eq!(p.ask("store.TOTAL"), "{'total': 41}");
    assert_eq!(report["transforms"][1]["kind"], "global");
}

#[test]
fn a_transformer_may_return_the_new_state_and_slots_classes_convert_too() {
    let sandbox = Sandbox::new();
    let mut p = start(&sandbox);
    let (code, report) = apply(
        &sandbox,
        &p,
        &spec("[[transform]]\nclass = \"store.Item\"\nfunction = \"migrations.item_state\"\n\n[[transform]]\nclass = \"store.Point\"\nfunction = \"migrations.point_swap\"\n"),
    );
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(p.ask("held.describe()"), "'1234@2/from-state'");
    assert_eq!(
        p.ask("[(q.x, q.y) for q in store.POINTS[:3]]"),
        "[(0, 0), (10, 1), (20, 2)]"
    );
    assert_eq!(report["transforms"][1]["instances"], 100);
}

#[test]
fn a_transformer_that_raises_on_the_last_instance_leaves_all_data_as_it_was() {
    let sandbox = Sandbox::new();
    let mut p = start(&sandbox);
    let before = p.ask_value("dump()");
    let modules = p.module_state();
    let (code, report) = apply(
        &sandbox,
        &p,
        &spec("[[transform]]\nglobal = \"store.TOTAL\"\nfunction = \"migrations.total_v2\"\n\n[[transform]]\nclass = \"store.Item\"\nfunction = \"migrations.fail_on_last\"\ndefaults = { tag = \"'x'\" }\n"),
    );
    assert_eq!(code, 1, "{report:#}");
    assert_eq!(report["outcome"], "rolled_back");
    let message = report["problem"]["message"].as_str().unwrap();
    assert!(
        message.contains("converting `store.Item` failed on instance 10002 of 10002")
            && message.contains("ValueError: cannot convert"),
        "{message}"
    );
    assert_eq!(p.ask("migrations.CALLS[0]"), "10002");
    assert_eq!(
        p.ask_value("dump()"),
        before,
        "the data after the rollback differs from before"
    );
    assert_eq!(p.ask("hasattr(store.Item, 'describe'), store.TOTAL"), "(False, 41)");
    p.module_state().assert_same(&modules, "the rolled-back update");
    assert_eq!(p.ask("__import__('pyreload').version()"), "'1'");
}

#[test]
fn a_failed_migration_restores_dict_and_slot_state_of_every_kind_of_instance() {
    let sandbox = Sandbox::new();
    let mut p = start(&sandbox);
    let state = "[(type(o).__name__, vars(o), getattr(o, 'mark', '-')) for o in store.MIXED]";
    let before = p.ask_value(state);
    assert!(before.contains("('Mixed', {'value': 2}, 4)"), "{before}");
    let modules = p.module_state();
    let (code, report) = apply(
        &sandbox,
        &p,
        &spec("[[transform]]\nclass = \"store.Base\"\nfunction = \"migrations.mixed_fail_on_last\"\n"),
    );
    assert_eq!(code, 1, "{report:#}");
    assert!(
        report["problem"]["message"]
            .as_str()
            .unwrap()
            .contains("converting `store.Base` failed on instance 6 of 6"),
        "{report:#}"
    );
    assert_eq!(
        p.ask("migrations.CALLS[0]"),
        "6",
        "the transformer ran on every instance"
    );
    assert_eq!(
        p.ask_value(state),
        before,
        "a plain and a slotted instance each got its state back"
    );
    p.module_state().assert_same(&modules, "the rolled-back update");
}

#[test]
fn transform_specs_that_cannot_work_are_refused_before_anything_changes() {
    let sandbox = Sandbox::new();
    let mut p = start(&sandbox);
    let modules = p.module_state();
    for (transforms, message) in [
        (
            "[[transform]]\nclass = \"store.Item\"\n",
            "a class transform needs a `function`, `defaults`, or both",
        ),
        (
            "[[transform]]\nclass = \"store.Item\"\nglobal = \"store.TOTAL\"\nfunction = \"migrations.total_v2\"\n",
            "either a `class` or a `global`, not both",
        ),
        (
            "[[transform]]\nglobal = \"store.TOTAL\"\n",
            "a global transform needs a `function`",
        ),
        (
            "[[transform]]\nclass = \"nowhere.Item\"\nfunction = \"migrations.item_state\"\n",
            "no module of `nowhere.Item` is loaded or updated",
        ),
        (
            "[[transform]]\nclass = \"store.Item\"\nfunction = \"migrations.nope\"\n",
            "`migrations.nope` is not in the program",
        ),
        (
            "[[transform]]\nglobal = \"store.TOTAL\"\nfunction = \"migrations.no_argument\"\n",
            "cannot be called with one argument",
        ),
        (
            "[[transform]]\nclass = \"store.Point\"\nfunction = \"migrations.point_swap\"\nmode = \"lazy\"\n",
            "`store.Point` cannot be migrated lazily: its instances do not support weak references",
        ),
        (
            "[[transform]]\nclass = \"store.Item\"\nfunction = \"store.Item.describe\"\n",
            "`store.Item.describe` is not in the program",
        ),
    ] {
        let path = sandbox.write("bad.toml", &spec(transforms));
        let out = sandbox.run(&[
            "apply",
            "--socket",
            p.socket().to_str().unwrap(),
            path.to_str().unwrap(),
        ]);
        assert_ne!(out.status.code(), Some(0));
        assert!(
            common::stderr(&out).contains(message),
            "expected {message:?}:\n{}",
            common::stderr(&out)
        );
        assert_eq!(p.ask("hasattr(store.Item, 'describe')"), "False");
        p.module_state().assert_same(&modules, message);
    }
}

const LAZY_PROGRAM: &str = r#"
import pickle, sys, threading, time
import pyreload, store, migrations

SEEN = {}

def first_use_while_lazy():
    # Waits for the commit, then uses instances at once, while the sweep
    # is still converting: reads, writes, method calls, isinstance, repr
    # and pickling must all see converted instances.
    while pyreload.version() != "2":
        time.sleep(0.0005)
    items = [store.ITEMS[i] for i in range(9_999, 9_899, -1)]
    SEEN["pickled"] = all(pickle.loads(pickle.dumps(o)).version == 2 for o in items[:20])
    SEEN["read"] = all(o.version == 2 for o in items[20:40])
    items[40].value = "written"
    SEEN["write"] = (items[40].value, items[40].version)
    SEEN["method"] = items[41].describe()
    SEEN["isinstance"] = isinstance(items[42], store.Item)
    SEEN["repr"] = "Item" in repr(items[43])

def hammer():
    # Touches instances from another thread during the sweep too, to race
    # the sweep for the same instances.
    while pyreload.version() != "2":
        time.sleep(0.0005)
    for i in range(0, 10_000, 7):
        store.ITEMS[i].value

threading.Thread(target=first_use_while_lazy, daemon=True).start()
for _ in range(3):
    threading.Thread(target=hammer, daemon=True).start()

def dump():
    items = sorted((k, sorted(vars(v).items())) for k, v in store.ITEMS.items())
    return hash(repr((items, [sorted(vars(s).items()) for s in store.SPECIAL], store.TOTAL)))
"#;

const COUNTING: &str = r#"

def count_once(obj):
    obj.times = getattr(obj, "times", 0) + 1
    obj.version = 2

def fail_in_sweep(obj):
    CALLS[0] += 1
    if CALLS[0] == 150:  # after the sample of 32, in the sweep
        raise ValueError(f"cannot convert {obj.value}")
    obj.version = 2

def fail_always(obj):
    raise ValueError("broken transformer")

def hang_in_sweep(obj):
    CALLS[0] += 1
    if CALLS[0] == 150:  # after the sample of 32, in the sweep
        while True:
            pass
    obj.version = 2
"#;

fn start_lazy(sandbox: &Sandbox) -> Hosted {
    start_lazy_with_env(sandbox, vec![])
}

fn start_lazy_with_env(sandbox: &Sandbox, env: Vec<(&str, String)>) -> Hosted {
    start_lazy_program(sandbox, LAZY_PROGRAM, env)
}

fn start_lazy_program(sandbox: &Sandbox, program: &str, env: Vec<(&str, String)>) -> Hosted {
    sandbox.write("store.py", STORE_V1);
    sandbox.write("migrations.py", &format!("{MIGRATIONS}{COUNTING}"));
    sandbox.write("prog.py", &format!("{program}{PROBE_LOOP}"));
    let p = probe_with_env(sandbox, &["--version", "1", "prog.py"], env);
    sandbox.write("store.py", STORE_V2);
    p
}

#[test]
fn a_lazy_transform_pauses_for_a_sample_and_converts_every_instance_exactly_once() {
    let sandbox = Sandbox::new();
    // The sweep is held back (a test-only fault), so what converts an
    // instance meanwhile is its use.
    let hold = PhaseHold::new(&sandbox);
    let mut p = start_lazy_with_env(&sandbox, vec![hold.env()]);
    let ids = p.ask("(id(store.ITEMS[0]), id(store.ITEMS[9999]))");
    hold.arm("sweep");
    let path = sandbox.write(
        "spec.toml",
        &spec("[[transform]]\nclass = \"store.Item\"\nfunction = \"migrations.count_once\"\nmode = \"lazy\"\ndefaults = { tag = \"'lazy'\" }\n"),
    );
    let apply = sandbox.spawn_apply_json(&p.socket(), &path);
    hold.wait_for(&p.socket(), "sweep");
    // Committed, the sweep not started: instances that no thread of the
    // program touches (the hammers take multiples of 7, the first-use
    // thread the last hundred) and that were not in the commit's sample
    // still have their old state, read past the hooks.
    let converted = |k: u64| format!("'version' in object.__getattribute__(store.ITEMS[{k}], '__dict__')");
    let waiting: Vec<u64> = p
        .ask_value("[k for k in range(1, 9000) if k % 7 and 'version' not in object.__getattribute__(store.ITEMS[k], '__dict__')][:3]")
        .trim_matches(|c| c == '[' || c == ']')
        .split(", ")
        .map(|k| k.parse().unwrap())
        .collect();
    assert_eq!(waiting.len(), 3, "{waiting:?}");
    // The use of one converts it, then and there; the others still wait.
    assert_eq!(
        p.ask(&format!("store.ITEMS[{}].describe()", waiting[0])),
        format!("'{}@2/lazy'", waiting[0])
    );
    assert_eq!(p.ask(&converted(waiting[0])), "True", "not converted on use");
    assert_eq!(
        p.ask(&format!("{}, {}", converted(waiting[1]), converted(waiting[2]))),
        "(False, False)"
    );
    hold.release("sweep");
    let out = apply.wait_with_output().unwrap();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(0), "{report:#}");
    let lazy = &report["transforms"][0]["lazy"];
    assert!(lazy["converted_on_use"].as_u64().unwrap() >= 1, "{lazy:#}");
    assert_eq!(lazy["converted_in_commit"], 32, "{lazy:#}");
    let total = lazy["converted_in_commit"].as_u64().unwrap()
        + lazy["converted_on_use"].as_u64().unwrap()
        + lazy["converted_by_sweep"].as_u64().unwrap();
    assert_eq!(total, (N + 2) as u64, "{lazy:#}");
    assert_eq!(lazy["failures"], serde_json::json!([]));
    // Exactly once each, though three threads raced the sweep.
    assert_eq!(
        p.ask("sorted({o.times for o in list(store.ITEMS.values()) + store.SPECIAL})"),
        "[1]"
    );
    assert_eq!(
        p.ask("all(o.version == 2 and o.tag == 'lazy' for o in store.ITEMS.values())"),
        "True"
    );
    assert_eq!(
        p.ask("(id(store.ITEMS[0]), id(store.ITEMS[9999]))"),
        ids,
        "identity kept"
    );
    common::wait_until(
        std::time::Duration::from_secs(60),
        || p.ask("len(SEEN)") == "6",
        || "the first-use thread did not finish".into(),
    );
    assert_eq!(
        p.ask("SEEN['pickled'], SEEN['read'], SEEN['write'], SEEN['isinstance'], SEEN['repr']"),
        "(True, True, ('written', 2), True, True)"
    );
    assert_eq!(p.ask("SEEN['method']"), "'9958@2/lazy'");
    // The hooks are gone once every instance is converted.
    assert_eq!(
        p.ask("[n for n in ('__getattribute__', '__setattr__', '__delattr__', '__new__') if n in vars(store.Item)]"),
        "[]"
    );
    // New instances are new from the start.
    assert_eq!(p.ask("store.Item(5).describe()"), "'5@2/new'");
}

#[test]
fn a_lazy_transformer_that_fails_on_the_sample_rolls_the_update_back() {
    let sandbox = Sandbox::new();
    let mut p = start_lazy(&sandbox);
    let before = p.ask_value("dump()");
    let modules = p.module_state();
    let (code, report) = apply(
        &sandbox,
        &p,
        &spec("[[transform]]\nclass = \"store.Item\"\nfunction = \"migrations.fail_always\"\nmode = \"lazy\"\n"),
    );
    assert_eq!(code, 1, "{report:#}");
    assert_eq!(report["outcome"], "rolled_back");
    let message = report["problem"]["message"].as_str().unwrap();
    assert!(
        message.contains("the lazy transformer for `store.Item` failed on instance 1 of a sample of 32"),
        "{message}"
    );
    assert_eq!(p.ask_value("dump()"), before);
    assert_eq!(
        p.ask("[n for n in ('__getattribute__', '__new__') if n in vars(store.Item)], hasattr(store.Item, 'describe')"),
        "([], False)"
    );
    assert_eq!(
        p.ask("store.Item(7).value"),
        "7",
        "the class creates instances as before"
    );
    p.module_state().assert_same(&modules, "the rolled-back update");
}

#[test]
fn a_lazy_failure_after_the_commit_is_logged_and_blocks_rollback() {
    let sandbox = Sandbox::new();
    let p = start_lazy(&sandbox);
    let (code, report) = apply(
        &sandbox,
        &p,
        &spec("[[transform]]\nclass = \"store.Item\"\nfunction = \"migrations.fail_in_sweep\"\nreverse = \"migrations.item_state\"\nmode = \"lazy\"\n"),
    );
    assert_eq!(code, 0, "{report:#}");
    // The failing instance kept its old state; it is tried again on its
    // next use (the transformer here fails only once).
    let failures = report["transforms"][0]["lazy"]["failures"].as_array().unwrap().clone();
    assert_eq!(failures.len(), 1, "{report:#}");
    assert!(
        failures[0].as_str().unwrap().starts_with("ValueError: cannot convert "),
        "{failures:?}"
    );
    assert!(
        report["warnings"]
            .to_string()
            .contains("1 instance(s) of `store.Item` could not be converted"),
        "{report:#}"
    );
    assert!(
        p.stderr().contains(
            "pyreload: lazy conversion of a Item for update `store-v2` failed, the object keeps its old state"
        ),
        "{}",
        p.stderr()
    );
    let out = sandbox.run(&["rollback", "--socket", p.socket().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        common::stderr(&out).contains("the lazy migration of `store.Item` failed on 1 instance(s)"),
        "{}",
        common::stderr(&out)
    );
    // The hooks stayed. Every instance was converted once, but the one that
    // failed (once); the program's threads may have used that one since,
    // which converts it. Using every instance now converts it if they did
    // not, and converts no other instance again.
    let mut p = p;
    assert_eq!(
        p.ask("[n for n in ('__getattribute__', '__setattr__', '__delattr__', '__new__') if n in vars(store.Item)]"),
        "['__getattribute__', '__setattr__', '__delattr__', '__new__']"
    );
    let calls: u64 = p.ask("migrations.CALLS[0]").parse().unwrap();
    assert!(calls == (N + 2) as u64 || calls == (N + 3) as u64, "{calls}");
    assert_eq!(
        p.ask("sorted({o.version for o in list(store.ITEMS.values()) + store.SPECIAL})"),
        "[2]"
    );
    assert_eq!(p.ask("migrations.CALLS[0]"), (N + 3).to_string());
    // Instances created now are new from the start, as during the sweep.
    assert_eq!(
        p.ask("store.Item(5).describe(), migrations.CALLS[0]"),
        format!("('5@2/new', {})", N + 3)
    );
}

#[test]
fn a_lazy_sweep_interrupted_by_its_deadline_leaves_the_hooks_converting_on_use_each_instance_once() {
    let sandbox = Sandbox::new();
    let mut p = start_lazy_program(&sandbox, "import sys, store, migrations\n", vec![]);
    let (code, report) = apply(
        &sandbox,
        &p,
        "[update]\nname = \"store-v2\"\nfrom = \"1\"\nto = \"2\"\n\n[[reload]]\nmodule = \"store\"\n\n\
         [safe_point]\ntimeout_ms = 2000\ncommit_timeout_ms = 300\n\n\
         [[transform]]\nclass = \"store.Item\"\nfunction = \"migrations.hang_in_sweep\"\nmode = \"lazy\"\n",
    );
    assert_eq!(code, 0, "{report:#}");
    assert!(
        report["warnings"]
            .to_string()
            .contains("the lazy migration of `store.Item` could not finish"),
        "{report:#}"
    );
    // The sweep stopped in its 150th call; the instance it was converting
    // kept its old state, the hooks stayed.
    assert_eq!(p.ask("migrations.CALLS[0]"), "150");
    assert_eq!(
        p.ask("[n for n in ('__getattribute__', '__setattr__', '__delattr__', '__new__') if n in vars(store.Item)]"),
        "['__getattribute__', '__setattr__', '__delattr__', '__new__']"
    );
    // Using every instance converts those the sweep did not reach, and the
    // one it was in, once each, and none it had converted.
    assert_eq!(
        p.ask("sorted({o.version for o in list(store.ITEMS.values()) + store.SPECIAL})"),
        "[2]"
    );
    assert_eq!(p.ask("migrations.CALLS[0]"), (N + 3).to_string());
    assert_eq!(
        p.ask("sorted({o.version for o in list(store.ITEMS.values()) + store.SPECIAL}), migrations.CALLS[0]"),
        format!("([2], {})", N + 3)
    );
    assert_eq!(
        p.ask("store.Item(5).describe(), migrations.CALLS[0]"),
        format!("('5@2/new', {})", N + 3)
    );
}

const WRITING_PROGRAM: &str = r#"
import sys, threading, time
import pyreload, store, migrations

WRITES = {}

def writer():
    # From the update on, writes to every instance, last first, against
    # the sweep, which goes the other way; every write must stay, and see
    # the instance converted.
    while pyreload.version() != "2":
        time.sleep(0.0005)
    ok = True
    for i in range(len(store.ITEMS) - 1, -1, -1):
        o = store.ITEMS[i]
        o.value = ("w", i)
        ok = ok and o.version == 2 and o.value == ("w", i)
        if i % 100 == 0:
            time.sleep(0)  # let the sweep have the GIL too
    WRITES["ok"] = ok

threading.Thread(target=writer, daemon=True).start()
"#;

#[test]
fn a_thread_writing_to_every_instance_during_the_lazy_sweep_keeps_its_writes_and_sees_each_converted_once() {
    let sandbox = Sandbox::new();
    let mut p = start_lazy_program(&sandbox, WRITING_PROGRAM, vec![]);
    let (code, report) = apply(
        &sandbox,
        &p,
        &spec("[[transform]]\nclass = \"store.Item\"\nfunction = \"migrations.count_once\"\nmode = \"lazy\"\n"),
    );
    assert_eq!(code, 0, "{report:#}");
    let lazy = &report["transforms"][0]["lazy"];
    assert_eq!(lazy["failures"], serde_json::json!([]));
    let total = lazy["converted_in_commit"].as_u64().unwrap()
        + lazy["converted_on_use"].as_u64().unwrap()
        + lazy["converted_by_sweep"].as_u64().unwrap();
    assert_eq!(total, (N + 2) as u64, "{lazy:#}");
    common::wait_until(
        std::time::Duration::from_secs(60),
        || p.ask("len(WRITES)") == "1",
        || "the writer did not finish".into(),
    );
    assert_eq!(p.ask("WRITES['ok']"), "True");
    assert_eq!(
        p.ask("sorted({o.times for o in list(store.ITEMS.values()) + store.SPECIAL})"),
        "[1]"
    );
    assert_eq!(
        p.ask("all(o.value == ('w', k) and o.version == 2 for k, o in store.ITEMS.items())"),
        "True"
    );
}

#[test]
fn the_lazy_hooks_act_as_the_attributes_they_replace_and_are_collected_once_removed() {
    let sandbox = Sandbox::new();
    let hold = PhaseHold::new(&sandbox);
    let mut p = start_lazy_program(&sandbox, HOOKED_PROGRAM, vec![hold.env()]);
    hold.arm("sweep");
    let path = sandbox.write(
        "spec.toml",
        &spec("[[transform]]\nclass = \"store.Item\"\nfunction = \"migrations.count_once\"\nmode = \"lazy\"\n"),
    );
    let apply = sandbox.spawn_apply_json(&p.socket(), &path);
    hold.wait_for(&p.socket(), "sweep");
    // Committed, the hooks on, the sweep held: each way of reaching an
    // attribute converts the instance first, then does what it did.
    assert_eq!(p.ask("probe_hooks()"), "'ok'");
    hold.release("sweep");
    let out = apply.wait_with_output().unwrap();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(0), "{report:#}");
    assert_eq!(report["transforms"][0]["lazy"]["failures"], serde_json::json!([]));
    // (The probe deleted `times` from ITEMS[1_003].)
    assert_eq!(
        p.ask("sorted({o.times for k, o in store.ITEMS.items() if k != 1_003} | {s.times for s in store.SPECIAL})"),
        "[1]"
    );
    // Off the class, and nothing else holds them: the collector frees the
    // hooks and the migration they referred to.
    assert_eq!(
        p.ask("(gc.collect(), [type(o).__name__ for o in gc.get_objects() if type(o).__name__ in ('lazy_hook', 'LazyMigration')])[1]"),
        "[]"
    );
}

const HOOKED_PROGRAM: &str = r#"
import gc, sys, store, migrations

class Guarded(store.Item):
    # Its own hooks, over the migration's: they call the class's.
    def __setattr__(self, name, value):
        super().__setattr__(name, value.upper() if isinstance(value, str) else value)

    def __getattr__(self, name):
        if name.startswith("else"):
            return f"missing {name}"
        raise AttributeError(name)

store.ITEMS[9_000] = Guarded(9_000)

def probe_hooks():
    Item = store.Item
    a, b, c, d, e = (store.ITEMS[k] for k in (1_001, 1_002, 1_003, 1_004, 1_005))
    checks = []
    Item.__setattr__(a, "x", 1)
    checks.append(("unbound setattr", a.version == 2 and a.x == 1 and a.times == 1))
    b.__setattr__("y", 2)
    checks.append(("bound setattr", b.version == 2 and b.y == 2))
    checks.append(("unbound getattribute", Item.__getattribute__(c, "version") == 2))
    del c.version
    checks.append(("delattr", not hasattr(c, "version") and c.times == 1))
    Item.__delattr__(c, "times")
    checks.append(("unbound delattr", "times" not in vars(c)))
    try:
        d.nothing
        checks.append(("missing attribute", False))
    except AttributeError as err:
        checks.append(("missing attribute", "nothing" in str(err) and d.version == 2))
    checks.append(("getattr default", getattr(e, "nothing", "dflt") == "dflt" and e.version == 2))
    g = store.ITEMS[9_000]
    g.note = "quiet"
    checks.append(("subclass hooks", g.note == "QUIET" and g.version == 2 and g.elsewhere == "missing elsewhere"))
    s = store.SPECIAL[1]
    checks.append(("subclass instance", s.version == 2 and s.times == 1))
    checks.append(("class access", Item.__setattr__ is Item.__dict__["__setattr__"]))
    for call in (lambda: Item.__setattr__(a, "x"), lambda: Item.__getattribute__(a), lambda: Item.__setattr__(a, "x", 1, 2)):
        try:
            call()
            checks.append(("arity", False))
        except TypeError:
            pass
    try:
        Item.__setattr__(5, "x", 1)
        checks.append(("not an instance", False))
    except (TypeError, AttributeError):
        pass
    new = Item(3)
    checks.append(("new instance", new.describe() == "3@2/new" and not hasattr(new, "times")))
    failed = [name for name, ok in checks if not ok]
    return "ok" if not failed else f"failed: {failed}"
"#;
