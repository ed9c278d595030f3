//! What follows a reload outside the reloaded module, and what an enum or
//! another class-defined table becomes (README, "What a reload keeps"):
//!
//! - copies made with `from m import NAME [as ALIAS]` follow when they
//!   still hold `m`'s old object, and are left alone when the importer
//!   rebound the name itself;
//! - `from m import *` importers gain the public names the update adds
//!   (`__all__` when `m` has one);
//! - an enum's members, a NamedTuple's and a dataclass's fields are
//!   definitions: they follow the new source, while an old member that is
//!   gone stays a plain instance;
//! - class attributes follow the module rule: constants take the new value,
//!   data keeps its own, `keep`/`reset` with `Class.attr` decide.
//!
//! Every test runs a real program under `pyreload run`, applies a spec that
//! reloads a module from its rewritten file, and asks the program what it
//! sees. Rollbacks (a failed `[check] after`, and `pyreload rollback`) must
//! restore what the update changed in the importers too.

mod common;

use common::{Hosted, Sandbox, PROBE_LOOP};
use serde_json::Value;

fn spec(modules: &[&str], extra: &str) -> String {
    // Each spec its own version: a program refuses an update to the version
    // it already runs.
    let mut s = format!("[update]\nname = \"follow\"\nto = \"{}\"\n", unique());
    for m in modules {
        s.push_str(&format!("\n[[reload]]\nmodule = \"{m}\"\n"));
    }
    s.push_str(extra);
    s
}

fn apply(sandbox: &Sandbox, p: &Hosted, spec_text: &str) -> (i32, Value) {
    let path = sandbox.write(&format!("spec-{}.toml", unique()), spec_text);
    sandbox.apply_json(p, &path)
}

fn check(sandbox: &Sandbox, p: &Hosted, spec_text: &str) -> Value {
    let path = sandbox.write(&format!("spec-{}.toml", unique()), spec_text);
    let out = sandbox.run(&[
        "check",
        "--socket",
        p.socket().to_str().unwrap(),
        "--json",
        path.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", sandbox.transcript());
    serde_json::from_slice(&out.stdout).unwrap()
}

fn rollback(sandbox: &Sandbox, p: &Hosted) {
    let out = sandbox.run(&["rollback", "--socket", p.socket().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", sandbox.transcript());
}

fn unique() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| a.iter().map(|s| s.as_str().unwrap().to_string()).collect())
        .unwrap_or_default()
}

// ---- copies: `from m import NAME [as ALIAS]` ----

const CFG_V1: &str = "TIMEOUT = 1\nNAME = 'old'\nLIMITS = (1, 2)\nTABLE = {'a': 1}\n\ndef helper():\n    return 'h1'\n";
const CFG_V2: &str =
    "TIMEOUT = 100\nNAME = 'new'\nLIMITS = (1, 2, 3)\nTABLE = {'b': 2}\n\ndef helper():\n    return 'h2'\n";

/// `user` copies two names and rebinds one of them itself, at import.
const USER: &str = "from cfg import TIMEOUT, LIMITS as L, helper\nTIMEOUT = 5\n\ndef timeout():\n    return TIMEOUT\n";

const COPIES_PROBE: &str = r#"
import sys
import cfg
from cfg import TIMEOUT, NAME as LABEL, NAME
from cfg import LIMITS, TABLE
import user
"#;

/// Everything the copy tests look at, in one line.
const COPIES: &str = "(TIMEOUT, LABEL, NAME, LIMITS, TABLE, user.TIMEOUT, user.timeout(), user.L, user.helper())";

fn start_copies(sandbox: &Sandbox) -> Hosted {
    sandbox.write("cfg.py", CFG_V1);
    sandbox.write("user.py", USER);
    sandbox.write("probe.py", &format!("{COPIES_PROBE}{PROBE_LOOP}"));
    common::probe(sandbox, &["probe.py"])
}

#[test]
fn from_import_copies_of_constants_follow_and_names_the_importer_rebound_keep_its_value() {
    let sandbox = Sandbox::new();
    let mut p = start_copies(&sandbox);
    assert_eq!(p.ask(COPIES), "(1, 'old', 'old', (1, 2), {'a': 1}, 5, 5, (1, 2), 'h1')");
    // The program rebinds one of its copies at run time: it owns it now.
    assert_eq!(p.ask("globals().__setitem__('LIMITS', (7,))"), "None");

    sandbox.write("cfg.py", CFG_V2);
    let s = spec(&["cfg"], "");
    // `check` shows the copies that will follow, before anything changes.
    let plan = check(&sandbox, &p, &s);
    let copies = strings(&plan["modules"][0]["copies"]);
    for c in [
        "__main__.TIMEOUT",
        "__main__.LABEL (NAME)",
        "__main__.NAME",
        "user.L (LIMITS)",
    ] {
        assert!(copies.contains(&c.to_string()), "{c} missing from {copies:?}");
    }
    assert!(!copies.iter().any(|c| c.starts_with("user.TIMEOUT")), "{copies:?}");
    assert!(!copies.contains(&"__main__.LIMITS".to_string()), "{copies:?}");
    assert_eq!(p.ask(COPIES), "(1, 'old', 'old', (7,), {'a': 1}, 5, 5, (1, 2), 'h1')");

    let (code, report) = apply(&sandbox, &p, &s);
    assert_eq!(code, 0, "{report:#}");
    // Constants: every copy that still held cfg's old object follows, under
    // its own name or an alias. The data table keeps its running value (in
    // cfg, and so in the copy). The names the program rebound keep theirs.
    assert_eq!(
        p.ask(COPIES),
        "(100, 'new', 'new', (7,), {'a': 1}, 5, 5, (1, 2, 3), 'h2')"
    );
    assert_eq!(p.ask("cfg.TIMEOUT, cfg.LIMITS"), "(100, (1, 2, 3))");
    let mut rebound = strings(&report["modules"][0]["rebound"]);
    rebound.sort();
    assert_eq!(
        rebound,
        ["__main__.LABEL", "__main__.NAME", "__main__.TIMEOUT", "user.L"]
    );

    // `pyreload rollback` puts the copies back too.
    rollback(&sandbox, &p);
    assert_eq!(p.ask(COPIES), "(1, 'old', 'old', (7,), {'a': 1}, 5, 5, (1, 2), 'h1')");
    assert_eq!(p.ask("LABEL is cfg.NAME and TIMEOUT is cfg.TIMEOUT"), "True");
}

#[test]
fn a_commit_that_rolls_back_leaves_every_copy_as_it_was() {
    let sandbox = Sandbox::new();
    let mut p = start_copies(&sandbox);
    let before = p.ask(COPIES);
    sandbox.write("cfg.py", CFG_V2);
    // The check runs after the copies were re-pointed, and sees them.
    let s = spec(&["cfg"], "\n[check]\nafter = \"__import__('__main__').TIMEOUT == 0\"\n");
    let (code, report) = apply(&sandbox, &p, &s);
    assert_eq!(code, 1, "{report:#}");
    assert_eq!(report["outcome"], "rolled_back");
    assert_eq!(p.ask(COPIES), before);
    // The same update with a check that holds commits, and the check saw
    // the importer's copy already following.
    let s = spec(
        &["cfg"],
        "\n[check]\nafter = \"__import__('__main__').TIMEOUT == 100\"\n",
    );
    let (code, report) = apply(&sandbox, &p, &s);
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(p.ask("TIMEOUT, LABEL"), "(100, 'new')");
}

#[test]
fn a_copy_the_program_rebinds_while_the_update_waits_keeps_its_value() {
    let sandbox = Sandbox::new();
    let mut p = start_copies(&sandbox);
    sandbox.write("cfg.py", CFG_V2);
    // The copies are found in prepare. The program then rebinds one of
    // them before the commit (here: the safe-point condition does, as the
    // program's own code could while the update waits); the commit sees
    // that the importer no longer holds cfg's object, and leaves it.
    let s = spec(
        &["cfg"],
        "\n[safe_point]\ncondition = \"__import__('__main__').__dict__.__setitem__('LABEL', 'mine') is None\"\n",
    );
    let (code, report) = apply(&sandbox, &p, &s);
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(p.ask("LABEL, NAME, TIMEOUT"), "('mine', 'new', 100)");
    let rebound = strings(&report["modules"][0]["rebound"]);
    assert!(!rebound.contains(&"__main__.LABEL".to_string()), "{rebound:?}");
}

// ---- star imports ----

const PLAIN_V1: &str = "def func1():\n    return 'f1'\n";
const PLAIN_V2: &str = r#"
import enum

def func1():
    return 'f1 v2'

def func2():
    return 'f2'

class Test:
    def hello(self):
        return 'hello'

number = 0
_private = 1
mine = 'from plain'

class TestEnum(enum.Enum):
    A = 'a'
"#;
const LISTED_V1: &str = "__all__ = ['shown']\n\ndef shown():\n    return 's'\n\ndef hidden():\n    return 'h'\n";
const LISTED_V2: &str = "__all__ = ['shown', 'added']\n\ndef shown():\n    return 's2'\n\ndef hidden():\n    return 'h'\n\ndef added():\n    return 'a'\n\ndef also_hidden():\n    return 'x'\n";

#[test]
fn star_importers_gain_the_public_names_an_update_adds_and_respect_all() {
    let sandbox = Sandbox::new();
    sandbox.write("plain.py", PLAIN_V1);
    sandbox.write("listed.py", LISTED_V1);
    // `mine` is the importer's own, bound before the reload adds a `mine`
    // to `plain`: it stays the importer's.
    sandbox.write(
        "probe.py",
        &format!(
            "import sys\nfrom plain import *\nfrom listed import *\nmine = 'own'\n\
             import plain as _plain\n_plain.late = 'set at run time'\n{PROBE_LOOP}"
        ),
    );
    let mut p = common::probe(&sandbox, &["probe.py"]);
    assert_eq!(p.ask("func2()"), "raised NameError: name 'func2' is not defined");
    sandbox.write("plain.py", PLAIN_V2);
    sandbox.write("listed.py", LISTED_V2);
    let s = spec(&["plain", "listed"], "");
    let plan = check(&sandbox, &p, &s);
    assert!(strings(&plan["modules"][0]["copies"]).contains(&"__main__ (import *)".to_string()));
    assert!(strings(&plan["modules"][1]["copies"]).contains(&"__main__ (import *)".to_string()));

    let (code, report) = apply(&sandbox, &p, &s);
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(
        p.ask("func1(), func2(), Test().hello(), number, TestEnum.A.value"),
        "('f1 v2', 'f2', 'hello', 0, 'a')"
    );
    assert_eq!(p.ask("_private"), "raised NameError: name '_private' is not defined");
    assert_eq!(p.ask("mine"), "'own'");
    // Only names the update adds: `late` was in `plain` before the update.
    assert_eq!(p.ask("'late' in globals()"), "False");
    // `__all__` decides what `listed` exports.
    assert_eq!(p.ask("shown(), added()"), "('s2', 'a')");
    assert_eq!(
        p.ask("also_hidden"),
        "raised NameError: name 'also_hidden' is not defined"
    );
    assert_eq!(p.ask("hidden"), "raised NameError: name 'hidden' is not defined");
    // The names added are the module's own objects: a later update reaches them.
    assert_eq!(p.ask("func2 is __import__('plain').func2"), "True");
    let rebound = strings(&report["modules"][0]["rebound"]);
    assert!(
        rebound.contains(&"__main__.func2 (new, import *)".to_string()),
        "{rebound:?}"
    );
    assert!(!rebound.iter().any(|r| r.starts_with("__main__.mine")), "{rebound:?}");

    // A second update changes the added function; the importer sees it.
    sandbox.write("plain.py", &PLAIN_V2.replace("return 'f2'", "return 'f2 v3'"));
    let (code, report) = apply(&sandbox, &p, &spec(&["plain"], ""));
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(p.ask("func2()"), "'f2 v3'");

    // Rolling both back removes the names the star import gained.
    rollback(&sandbox, &p);
    rollback(&sandbox, &p);
    assert_eq!(p.ask("func1()"), "'f1'");
    assert_eq!(p.ask("func2()"), "raised NameError: name 'func2' is not defined");
    assert_eq!(p.ask("added"), "raised NameError: name 'added' is not defined");
    assert_eq!(p.ask("mine"), "'own'");
}

// ---- enums ----

const COLORS_V1: &str = r#"
import enum

class Color(enum.Enum):
    RED = 1
    GREEN = 2
    BLUE = 3

class Perm(enum.Flag):
    R = 4
    W = 2

# StrEnum is new in 3.11; before it, a str-mixin Enum is the same idea.
class Mode(*((enum.StrEnum,) if hasattr(enum, 'StrEnum') else (str, enum.Enum))):
    FAST = 'fast'
    SLOW = 'slow'
"#;

/// BLUE removed, YELLOW added, GREEN's value changed; a Flag bit added; a
/// StrEnum member swapped for another.
const COLORS_V2: &str = r#"
import enum

class Color(enum.Enum):
    RED = 1
    GREEN = 20
    YELLOW = 4

    def warm(self):
        return self in (Color.RED, Color.YELLOW)

class Perm(enum.Flag):
    R = 4
    W = 2
    X = 1

# StrEnum is new in 3.11; before it, a str-mixin Enum is the same idea.
class Mode(*((enum.StrEnum,) if hasattr(enum, 'StrEnum') else (str, enum.Enum))):
    FAST = 'fast'
    ECO = 'eco'
"#;

const COLORS_PROBE: &str = r#"
import sys
import colors
from colors import Color, Perm, Mode
red, green, blue = Color.RED, Color.GREEN, Color.BLUE
rw = Perm.R | Perm.W
fast, slow = Mode.FAST, Mode.SLOW
by_color = {Color.RED: 'r'}
"#;

/// The colors program, updated to COLORS_V2 (the update must commit),
/// with the update's report.
fn colors_at_v2(sandbox: &Sandbox) -> (Hosted, Value) {
    let p = start_colors(sandbox);
    sandbox.write("colors.py", COLORS_V2);
    let (code, report) = apply(sandbox, &p, &spec(&["colors"], ""));
    assert_eq!(code, 0, "{report:#}");
    (p, report)
}

fn start_colors(sandbox: &Sandbox) -> Hosted {
    sandbox.write("colors.py", COLORS_V1);
    sandbox.write("probe.py", &format!("{COLORS_PROBE}{PROBE_LOOP}"));
    common::probe(sandbox, &["probe.py"])
}

/// What `old in E` answers for an old member the update removed: CPython
/// 3.12 changed `EnumType.__contains__` to accept any instance of the class.
const IN_FOR_ANY_INSTANCE: &str = if cfg!(Py_3_12) { "True" } else { "False" };

#[test]
fn an_enum_takes_the_new_members_and_every_table_agrees() {
    let sandbox = Sandbox::new();
    let (mut p, report) = colors_at_v2(&sandbox);

    // Length, iteration, lookup by value and by name, the mapping proxy and
    // the internal tables all say the same.
    assert_eq!(
        p.ask("len(Color), [c.name for c in Color]"),
        "(3, ['RED', 'GREEN', 'YELLOW'])"
    );
    assert_eq!(p.ask("Color(4) is Color.YELLOW is Color['YELLOW']"), "True");
    assert_eq!(
        p.ask("list(Color.__members__), sorted(Color._member_map_)"),
        "(['RED', 'GREEN', 'YELLOW'], ['GREEN', 'RED', 'YELLOW'])"
    );
    assert_eq!(
        p.ask("sorted(Color._value2member_map_), Color._member_names_"),
        "([1, 4, 20], ['RED', 'GREEN', 'YELLOW'])"
    );
    assert_eq!(
        p.ask("type(Color.YELLOW) is Color and isinstance(Color.YELLOW, colors.Color)"),
        "True"
    );
    // A member with the same name and value keeps its identity: references
    // and dict keys the program holds stay good. New methods reach it.
    assert_eq!(
        p.ask("red is Color.RED, by_color[Color.RED], red.warm(), Color.YELLOW.warm()"),
        "(True, 'r', True, True)"
    );

    // A removed member that the program still holds keeps its name and
    // value and is still an instance of the class, but is no member: not
    // found by value or name, not iterated. `in` is the enum module's own
    // rule: by name up to 3.11, any instance of the class from 3.12.
    assert_eq!(
        p.ask("blue.name, blue.value, repr(blue), isinstance(blue, Color), blue in list(Color)"),
        "('BLUE', 3, '<Color.BLUE: 3>', True, False)"
    );
    assert_eq!(p.ask("blue in Color"), IN_FOR_ANY_INSTANCE);
    assert_eq!(p.ask("Color.__members__.get(blue.name) is blue"), "False");
    assert_eq!(p.ask("Color(3)"), "raised ValueError: 3 is not a valid Color");
    assert_eq!(p.ask("Color['BLUE']"), "raised KeyError: 'BLUE'");
    assert_eq!(
        p.ask("hasattr(Color, 'BLUE'), blue == Color.RED, blue.warm()"),
        "(False, False, False)"
    );
    // A member whose value changed is the new version's member; the old
    // object is like a removed one, and its old value finds nothing.
    assert_eq!(
        p.ask("green is Color.GREEN, Color.GREEN.value, Color(20) is Color.GREEN, green.value"),
        "(False, 20, True, 2)"
    );
    assert_eq!(p.ask("Color(2)"), "raised ValueError: 2 is not a valid Color");

    let module = &report["modules"][0];
    let removed = strings(&module["globals"]["removed"]);
    assert!(removed.contains(&"Color.BLUE".to_string()), "{module:#}");
    // enum's own machinery is not reported as the program's functions.
    let changed = strings(&module["functions"]["changed"]);
    assert!(
        !changed
            .iter()
            .any(|f| f.contains("_generate_next_value_") || f.contains("__new__")),
        "{changed:?}"
    );

    // `pyreload rollback` restores the old members, the same objects.
    rollback(&sandbox, &p);
    assert_eq!(
        p.ask("[c.name for c in Color], Color(3) is blue, Color['GREEN'] is green"),
        "(['RED', 'GREEN', 'BLUE'], True, True)"
    );
    assert_eq!(p.ask("Color['YELLOW']"), "raised KeyError: 'YELLOW'");
    assert_eq!(p.ask("hasattr(Color, 'warm'), len(Color)"), "(False, 3)");
}

#[test]
#[cfg_attr(not(Py_3_11), ignore = "Flag's masks (_flag_mask_, ...) are new in CPython 3.11")]
fn a_flag_enum_takes_a_new_bit_and_its_masks() {
    let sandbox = Sandbox::new();
    let mut p = start_colors(&sandbox);
    // (Perm(7) raises, with a message of several lines.)
    assert_eq!(p.ask("Perm._flag_mask_, len(Perm)"), "(6, 2)");
    sandbox.write("colors.py", COLORS_V2);
    let (code, report) = apply(&sandbox, &p, &spec(&["colors"], ""));
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(
        p.ask("[m.name for m in Perm], len(Perm), Perm._flag_mask_"),
        "(['R', 'W', 'X'], 3, 7)"
    );
    // The masks follow: 7 is valid now, ~R includes the new bit.
    assert_eq!(
        p.ask("Perm(7), ~Perm.R, Perm['X'] is Perm(1)"),
        "(<Perm.R|W|X: 7>, <Perm.W|X: 3>, True)"
    );
    // A composite the program built before the update still works.
    assert_eq!(
        p.ask("rw, rw == Perm.R | Perm.W, Perm.R in rw, Perm.X in rw"),
        "(<Perm.R|W: 6>, True, True, False)"
    );
}

#[test]
#[cfg_attr(not(Py_3_11), ignore = "enum.StrEnum is new in CPython 3.11")]
fn a_str_enum_swaps_a_member_and_an_old_instance_stays_a_string() {
    let sandbox = Sandbox::new();
    let (mut p, _) = colors_at_v2(&sandbox);
    assert_eq!(
        p.ask("[m.value for m in Mode], Mode('eco') is Mode.ECO, Mode.ECO.upper(), fast is Mode.FAST"),
        "(['fast', 'eco'], True, 'ECO', True)"
    );
    assert_eq!(p.ask("isinstance(Mode.ECO, str) and type(Mode.ECO) is Mode"), "True");
    assert_eq!(p.ask("slow == 'slow', str(slow)"), "(True, 'slow')");
    assert_eq!(p.ask("slow in Mode"), IN_FOR_ANY_INSTANCE);
    assert_eq!(p.ask("Mode.__members__.get(slow.name) is slow"), "False");
    assert_eq!(p.ask("Mode('slow')"), "raised ValueError: 'slow' is not a valid Mode");
}

// ---- class-level definitions and constants ----

const SHAPES_V1: &str = r#"
from dataclasses import dataclass
from typing import NamedTuple

class Point(NamedTuple):
    x: int
    y: int = 0

@dataclass
class Item:
    name: str
    qty: int = 1

class Config:
    SIZES = (1, 2)
    LABEL = 'v1'
    cache = {}
    handlers = ['h1']

    def __eq__(self, other):
        return True
"#;

const SHAPES_V2: &str = r#"
from dataclasses import dataclass, field
from typing import NamedTuple

class Point(NamedTuple):
    x: int
    y: int = 5

@dataclass
class Item:
    name: str
    qty: int = 1
    tags: list = field(default_factory=list)

class Config:
    SIZES = (1, 2, 3)
    LABEL = 'v2'
    cache = {}
    handlers = ['h2']
"#;

#[test]
fn class_constants_follow_class_data_stays_and_keep_and_reset_name_class_attributes() {
    let sandbox = Sandbox::new();
    sandbox.write("shapes.py", SHAPES_V1);
    sandbox.write(
        "probe.py",
        &format!(
            "import sys\nfrom shapes import Point, Item, Config\nConfig.cache['k'] = 1\nc = Config()\n{PROBE_LOOP}"
        ),
    );
    let mut p = common::probe(&sandbox, &["probe.py"]);
    assert_eq!(p.ask("hash(c)"), "raised TypeError: unhashable type: 'Config'");
    sandbox.write("shapes.py", SHAPES_V2);
    let s = spec(
        &["shapes"],
        "keep = [\"Config.LABEL\"]\nreset = [\"Config.handlers\"]\n",
    );
    let plan = check(&sandbox, &p, &s);
    assert!(
        strings(&plan["modules"][0]["globals"]["kept"]).contains(&"Config.LABEL".to_string()),
        "{plan:#}"
    );
    assert!(
        strings(&plan["modules"][0]["globals"]["reset"]).contains(&"Config.handlers".to_string()),
        "{plan:#}"
    );

    let (code, report) = apply(&sandbox, &p, &s);
    assert_eq!(code, 0, "{report:#}");
    // Constants take the new value, data keeps its own; keep and reset decide.
    assert_eq!(
        p.ask("Config.SIZES, Config.LABEL, Config.cache, Config.handlers"),
        "((1, 2, 3), 'v1', {'k': 1}, ['h2'])"
    );
    // Definitions made by the class machinery follow the new source.
    assert_eq!(
        p.ask("Point._fields, Point._field_defaults, Point(1)"),
        "(('x', 'y'), {'y': 5}, Point(x=1, y=5))"
    );
    assert_eq!(
        p.ask("Item.__match_args__, list(Item.__dataclass_fields__), Item('a')"),
        "(('name', 'qty', 'tags'), ['name', 'qty', 'tags'], Item(name='a', qty=1, tags=[]))"
    );
    // `__eq__` is gone, and with it the `__hash__ = None` it implied.
    assert_eq!(p.ask("c == 1, hash(c) == hash(c)"), "(False, True)");
    let module = &report["modules"][0];
    assert!(
        strings(&module["globals"]["kept"]).contains(&"Config.LABEL".to_string()),
        "{module:#}"
    );
    assert!(
        strings(&module["globals"]["reset"]).contains(&"Config.handlers".to_string()),
        "{module:#}"
    );

    rollback(&sandbox, &p);
    assert_eq!(
        p.ask("Config.SIZES, Config.handlers, Point(1), Item.__match_args__"),
        "((1, 2), ['h1'], Point(x=1, y=0), ('name', 'qty'))"
    );
    assert_eq!(p.ask("hash(c)"), "raised TypeError: unhashable type: 'Config'");
}

#[test]
fn reset_of_an_unknown_class_attribute_is_refused_with_its_location() {
    let sandbox = Sandbox::new();
    sandbox.write("shapes.py", SHAPES_V1);
    sandbox.write("probe.py", &format!("import sys, shapes\n{PROBE_LOOP}"));
    let p = common::probe(&sandbox, &["probe.py"]);
    let (code, report) = apply(&sandbox, &p, &spec(&["shapes"], "reset = [\"Konfig.handlers\"]\n"));
    assert_eq!(code, 1, "{report:#}");
    assert_eq!(report["outcome"], "refused");
    let message = report["problem"]["message"].as_str().unwrap();
    assert!(message.contains("`Konfig.handlers` is listed in `reset`"), "{message}");
}

#[test]
fn an_enum_member_that_keeps_its_identity_takes_what_the_new_init_sets() {
    let v1 = "import enum\n\nclass Planet(enum.Enum):\n    EARTH = (1, 2)\n    MARS = (3, 4)\n\n    def __init__(self, mass, radius):\n        self.label = f'm={mass}'\n";
    let v2 = "import enum\n\nclass Planet(enum.Enum):\n    MARS = (3, 4)\n    EARTH = (1, 2)\n\n    def __init__(self, mass, radius):\n        self.label = f'mass {mass}, radius {radius}'\n";
    let sandbox = Sandbox::new();
    sandbox.write("planets.py", v1);
    sandbox.write(
        "probe.py",
        &format!("import sys\nfrom planets import Planet\nearth = Planet.EARTH\n{PROBE_LOOP}"),
    );
    let mut p = common::probe(&sandbox, &["probe.py"]);
    sandbox.write("planets.py", v2);
    let (code, report) = apply(&sandbox, &p, &spec(&["planets"], ""));
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(
        p.ask("earth is Planet.EARTH, earth.label, [m.name for m in Planet]"),
        "(True, 'mass 1, radius 2', ['MARS', 'EARTH'])"
    );
}

#[test]
fn a_copy_of_a_transformed_global_follows_the_conversion_and_its_reversal() {
    let v1 = "INDEX = {'a': 1}\n";
    let v2 = "INDEX = {}\n\ndef to_v2(old):\n    return {k: [v] for k, v in old.items()}\n\ndef to_v1(new):\n    return {k: v[0] for k, v in new.items()}\n";
    let sandbox = Sandbox::new();
    sandbox.write("store.py", v1);
    sandbox.write(
        "probe.py",
        &format!("import sys\nimport store\nfrom store import INDEX\n{PROBE_LOOP}"),
    );
    let mut p = common::probe(&sandbox, &["probe.py"]);
    sandbox.write("store.py", v2);
    let s = spec(
        &["store"],
        "\n[[transform]]\nglobal = \"store.INDEX\"\nfunction = \"store.to_v2\"\nreverse = \"store.to_v1\"\n",
    );
    let (code, report) = apply(&sandbox, &p, &s);
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(p.ask("INDEX, INDEX is store.INDEX"), "({'a': [1]}, True)");
    // The program writes through its copy after the update...
    assert_eq!(p.ask("INDEX.__setitem__('b', [2])"), "None");
    // ...and after the rollback the copy is the reversed table, with that
    // write, not the table it held before the update.
    rollback(&sandbox, &p);
    assert_eq!(p.ask("INDEX, INDEX is store.INDEX"), "({'a': 1, 'b': 2}, True)");
}
