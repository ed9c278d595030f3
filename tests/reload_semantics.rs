//! What a reload keeps and what it replaces (README, "What a reload keeps"),
//! checked from inside a running program.
//!
//! The probe program imports `shop`, takes references to it the ways real
//! programs do (`from shop import f`, bound methods, live instances, data),
//! then answers Python expressions read on stdin. Each test rewrites
//! `shop.py` on disk, applies a spec that reloads it from its own file, and
//! asks the program what it now sees.

mod common;

use common::{Hosted, Sandbox, PROBE_LOOP};

const SHOP_V1: &str = r#"
import functools

TAX = 0.1
CACHE = {}
HITS = 0
LIMITS = (1, 2)


def price(x):
    return x * (1 + TAX)


def logged(f):
    @functools.wraps(f)
    def wrapper(*a, **k):
        return f(*a, **k)
    return wrapper


@logged
def greet(name):
    return "hello " + name


class Base:
    def kind(self):
        return "base"


class Cart(Base):
    LIMIT = 3
    registry = []

    def __init__(self):
        self.items = []

    def add(self, x):
        self.items.append(x)
        return len(self.items)

    def kind(self):
        return "cart:" + super().kind()

    @staticmethod
    def unit():
        return "eur"

    @classmethod
    def make(cls):
        return cls()

    @property
    def total(self):
        return sum(self.items)


def old_only():
    return 1


def bump():
    global HITS
    HITS += 1
    return HITS
"#;

/// v2: every kind of change a reload must handle.
const SHOP_V2: &str = r#"
import functools

TAX = 0.2                 # a constant: takes the new value
CACHE = {}                # data: keeps the running {"k": "v"}
HITS = 0                  # an int used as a counter: the spec says keep
LIMITS = (1, 2, 3)


def price(x):
    return round(x * (1 + TAX), 2)


def logged(f):
    @functools.wraps(f)
    def wrapper(*a, **k):
        return f(*a, **k)
    return wrapper


@logged
def greet(name):
    return "hi " + name


class Base:
    def kind(self):
        return "base2"


class Cart(Base):
    LIMIT = 5
    registry = []

    def __init__(self):
        self.items = []

    def add(self, x):
        self.items.append(x * 10)
        return len(self.items)

    def kind(self):
        return "cart2:" + super().kind()

    def describe(self):
        return f"{len(self.items)} items"

    @staticmethod
    def unit():
        return "usd"

    @classmethod
    def make(cls):
        c = cls()
        c.items.append(1)
        return c

    @property
    def total(self):
        return 2 * sum(self.items)


def new_func():
    return "new " + greet("x")


def bump():
    global HITS
    HITS += 1
    return HITS
"#;

const PROBE: &str = r#"
import sys
import shop
from shop import price, greet

cart = shop.Cart()
cart.add(5)
held = shop.price
bound = cart.add
unbound = shop.Cart.add
shop.CACHE["k"] = "v"
shop.Cart.registry.append("r")
shop.bump()
shop.bump()
"#;

const SPEC: &str = r#"
[update]
name = "shop-v2"
from = "1"
to = "2"

[[reload]]
module = "shop"
keep = ["HITS"]
"#;

fn start(sandbox: &Sandbox) -> Hosted {
    sandbox.write("shop.py", SHOP_V1);
    sandbox.write("probe.py", &format!("{PROBE}{PROBE_LOOP}"));
    common::probe(sandbox, &["--version", "1", "probe.py"])
}

fn apply(sandbox: &Sandbox, probe: &Hosted, spec: &str) -> (i32, serde_json::Value) {
    let spec = sandbox.write(&format!("spec-{}.toml", rand_suffix()), spec);
    sandbox.apply_json(probe, &spec)
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

/// Every observation the tests make, in one string, to compare states.
const SNAPSHOT: &str = "(price(10), held(10), greet('a'), shop.TAX, shop.CACHE, shop.HITS, shop.LIMITS, cart.items, cart.kind(), \
    shop.Cart.unit(), cart.total, shop.Cart.LIMIT, shop.Cart.registry, hasattr(shop, 'old_only'), hasattr(shop, 'new_func'), \
    hasattr(cart, 'describe'), sorted(k for k in vars(shop) if not k.startswith('__')), held is shop.price, type(cart) is shop.Cart)";

#[test]
fn functions_classes_and_constants_take_new_code_while_data_is_kept() {
    let sandbox = Sandbox::new();
    let mut p = start(&sandbox);
    sandbox.write("shop.py", SHOP_V2);
    let (code, report) = apply(&sandbox, &p, SPEC);
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(report["outcome"], "committed");

    // Functions: new code, same objects, so copies made with
    // `from shop import price` and references held elsewhere run it.
    assert_eq!(p.ask("price(10)"), "12.0");
    assert_eq!(p.ask("held(10)"), "12.0");
    assert_eq!(p.ask("held is shop.price is price"), "True");
    // A decorated function: the wrapper calls the new wrapped function.
    assert_eq!(p.ask("greet('a')"), "'hi a'");
    assert_eq!(p.ask("shop.new_func()"), "'new hi x'");
    assert_eq!(p.ask("hasattr(shop, 'old_only')"), "False");

    // Classes: the live instance gets the new methods, zero-argument
    // super() still works, and the class keeps its identity.
    assert_eq!(p.ask("type(cart) is shop.Cart and isinstance(cart, shop.Base)"), "True");
    assert_eq!(p.ask("cart.add(1)"), "2");
    assert_eq!(p.ask("cart.items"), "[5, 10]");
    assert_eq!(p.ask("bound(2)"), "3");
    assert_eq!(p.ask("unbound(cart, 3)"), "4");
    assert_eq!(p.ask("cart.kind()"), "'cart2:base2'");
    assert_eq!(p.ask("cart.describe()"), "'4 items'");
    assert_eq!(p.ask("shop.Cart.unit()"), "'usd'");
    assert_eq!(p.ask("shop.Cart.make().items"), "[1]");
    assert_eq!(p.ask("cart.total"), "130");
    assert_eq!(p.ask("shop.Cart.LIMIT"), "5");
    assert_eq!(p.ask("shop.Cart.registry"), "['r']");

    // Globals: constants updated, data and `keep` kept.
    assert_eq!(p.ask("shop.TAX, shop.LIMITS"), "(0.2, (1, 2, 3))");
    assert_eq!(p.ask("shop.CACHE"), "{'k': 'v'}");
    assert_eq!(p.ask("shop.HITS"), "2");
    assert_eq!(p.ask("shop.bump()"), "3");

    // The report says what changed.
    let module = &report["modules"][0];
    let list = |v: &serde_json::Value| {
        v.as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    let changed = list(&module["functions"]["changed"]);
    for f in ["price", "greet", "Base.kind", "Cart.add", "Cart.kind", "Cart.make"] {
        assert!(
            changed.contains(&f.to_string()),
            "{f} not reported changed: {changed:?}"
        );
    }
    assert!(changed.iter().any(|f| f.starts_with("Cart.total")), "{changed:?}");
    assert!(
        !changed.contains(&"bump".to_string()),
        "bump did not change: {changed:?}"
    );
    assert!(list(&module["functions"]["added"]).contains(&"new_func".to_string()));
    assert!(list(&module["functions"]["added"]).contains(&"Cart.describe".to_string()));
    assert_eq!(list(&module["functions"]["removed"]), vec!["old_only"]);
    assert_eq!(list(&module["globals"]["updated"]), vec!["LIMITS", "TAX"]);
    assert_eq!(list(&module["globals"]["kept"]), vec!["CACHE", "HITS"]);
    assert!(report["timings"]["pause_ms"].as_f64().unwrap() > 0.0);
}

#[test]
fn a_failed_check_rolls_everything_back_to_the_same_objects() {
    let sandbox = Sandbox::new();
    let mut p = start(&sandbox);
    let before = p.ask_value(SNAPSHOT);
    let modules = p.module_state();
    let ids_before =
        p.ask_value("[id(x) for x in (shop.price, shop.Cart, shop.CACHE, price.__code__, shop.Cart.add.__code__)]");
    sandbox.write("shop.py", SHOP_V2);
    let spec = format!("{SPEC}\n[check]\nafter = \"shop.Cart.LIMIT == 99\"\n");
    let (code, report) = apply(&sandbox, &p, &spec);
    assert_eq!(code, 1, "{report:#}");
    assert_eq!(report["outcome"], "rolled_back");
    assert!(
        report["problem"]["message"].as_str().unwrap().contains("was false"),
        "{report:#}"
    );
    assert_eq!(p.ask_value(SNAPSHOT), before);
    p.module_state().assert_same(&modules, "the rolled-back update");
    assert_eq!(
        p.ask_value("[id(x) for x in (shop.price, shop.Cart, shop.CACHE, price.__code__, shop.Cart.add.__code__)]"),
        ids_before
    );
    // Still updatable: the same change without the failing check commits.
    let (code, report) = apply(&sandbox, &p, SPEC);
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(p.ask("price(10)"), "12.0");
}

#[test]
fn a_module_body_that_raises_changes_nothing() {
    let sandbox = Sandbox::new();
    let mut p = start(&sandbox);
    let before = p.ask_value(SNAPSHOT);
    let modules = p.module_state();
    sandbox.write("shop.py", &format!("{SHOP_V2}\nraise RuntimeError('config missing')\n"));
    let (code, report) = apply(&sandbox, &p, SPEC);
    assert_eq!(code, 1);
    assert_eq!(report["outcome"], "refused");
    let problem = &report["problem"];
    assert!(
        problem["message"]
            .as_str()
            .unwrap()
            .contains("RuntimeError: config missing"),
        "{report:#}"
    );
    assert!(problem["location"]["path"].as_str().unwrap().ends_with("shop.py"));
    assert_eq!(p.ask_value(SNAPSHOT), before);
    p.module_state().assert_same(&modules, "the refused update");
    assert_eq!(p.ask("__import__('pyreload').version()"), "'1'");
}

#[test]
fn a_function_that_cannot_be_patched_is_replaced_and_its_copies_rebound() {
    let sandbox = Sandbox::new();
    let mut p = start(&sandbox);
    // `greet` loses its decorator: the old object is a closure over `f`,
    // the new one is not, so it cannot take the new code in place.
    sandbox.write("shop.py", &SHOP_V2.replace("@logged\ndef greet", "def greet"));
    let (code, report) = apply(&sandbox, &p, SPEC);
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(p.ask("greet('a'), shop.greet('b')"), "('hi a', 'hi b')");
    assert_eq!(p.ask("greet is shop.greet"), "True");
    assert_eq!(report["modules"][0]["rebound"], serde_json::json!(["__main__.greet"]));
}

#[test]
fn reset_takes_new_data_and_objects_built_from_new_classes_join_the_live_class() {
    let sandbox = Sandbox::new();
    let v1 = "class Handler:\n    def run(self):\n        return 'old'\n\ndef a():\n    return 'a1'\n\nTABLE = {'a': a}\nDEFAULT = Handler()\n";
    sandbox.write("shop.py", v1);
    sandbox.write(
        "probe.py",
        &format!("import sys, shop\ntable = shop.TABLE\nh = shop.DEFAULT\n{PROBE_LOOP}"),
    );
    let mut p = common::probe(&sandbox, &["probe.py"]);
    let v2 = "class Handler:\n    def run(self):\n        return 'new'\n\ndef a():\n    return 'a2'\n\ndef b():\n    return 'b2'\n\nTABLE = {'a': a, 'b': b}\nDEFAULT = Handler()\n";
    sandbox.write("shop.py", v2);
    let spec =
        "[update]\nname = \"t\"\nto = \"2\"\n\n[[reload]]\nmodule = \"shop\"\nreset = [\"TABLE\", \"DEFAULT\"]\n";
    let (code, report) = apply(&sandbox, &p, spec);
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(p.ask("shop.TABLE['a'](), shop.TABLE['b']()"), "('a2', 'b2')");
    // The new table holds the live function objects, not staging copies,
    // so the next update reaches them too.
    assert_eq!(p.ask("shop.TABLE['a'] is shop.a and shop.TABLE['b'] is shop.b"), "True");
    assert_eq!(p.ask("shop.b.__globals__ is vars(shop)"), "True");
    // The old table object (held by the program) still works, with new code.
    assert_eq!(p.ask("table['a']()"), "'a2'");
    // A new instance of a class the update patched is an instance of the
    // live class.
    assert_eq!(p.ask("type(shop.DEFAULT) is shop.Handler is type(h)"), "True");
    assert_eq!(p.ask("shop.DEFAULT.run(), h.run()"), "('new', 'new')");
}

#[test]
fn a_changed_slots_layout_is_refused_with_the_reason() {
    let sandbox = Sandbox::new();
    sandbox.write(
        "shop.py",
        "class P:\n    __slots__ = ('x',)\n    def __init__(self):\n        self.x = 1\n",
    );
    sandbox.write("probe.py", &format!("import sys, shop\np = shop.P()\n{PROBE_LOOP}"));
    let mut p = common::probe(&sandbox, &["probe.py"]);
    let modules = p.module_state();
    sandbox.write(
        "shop.py",
        "class P:\n    __slots__ = ('x', 'y')\n    def __init__(self):\n        self.x = 1\n        self.y = 2\n",
    );
    let (code, report) = apply(
        &sandbox,
        &p,
        "[update]\nname = \"t\"\nto = \"2\"\n\n[[reload]]\nmodule = \"shop\"\n",
    );
    assert_eq!(code, 1);
    assert_eq!(report["outcome"], "rolled_back");
    let message = report["problem"]["message"].as_str().unwrap();
    assert!(
        message.contains("`shop.P` changes its instance layout") && message.contains("__slots__"),
        "{message}"
    );
    assert_eq!(p.ask("p.x, type(p) is shop.P, shop.P.__slots__"), "(1, True, ('x',))");
    p.module_state().assert_same(&modules, "the rolled-back update");
}

const LINES_V1: &str = r#"
import typing

T = typing.TypeVar("T", bound="Box")


def same(x: int = 1, *, k: str = "k") -> "Thing":
    """doc"""
    return x


def typed(a: typing.Optional["Box"], b: list[int], c: typing.Dict[str, T]) -> typing.Union[T, None]:
    return None


def inner():
    a = 1
    raise ValueError(a)


def zero(x=0.0, props={"a": (1, "b")}):
    return x


def moves():
    raise ValueError("moves")


class Box:
    size: int = 0

    @property
    def area(self):
        return 1
"#;

/// One line more inside `inner` (its first line stays), a default whose
/// sign changes, a property's new body; everything else as it was, but
/// lower down.
fn lines_v2() -> String {
    LINES_V1
        .replace("    a = 1\n", "    a = 1\n\n")
        .replace("x=0.0", "x=-0.0")
        .replace("return 1\n", "return 2\n")
}

const LINES_PROBE: &str = r#"
import sys
import lines

def line_of(f):
    try:
        f()
    except Exception as e:
        tb = e.__traceback__
        while tb.tb_next:
            tb = tb.tb_next
        return tb.tb_lineno

def ids():
    s = lines.same
    return (id(s.__code__), id(s.__annotations__), id(s.__defaults__), id(s.__kwdefaults__),
            id(lines.Box.__annotations__), id(lines.typed.__annotations__))

before = ids()
"#;

/// What the merge leaves alone because the new version rebuilt it equal
/// (a function's code, annotations and defaults, typing's `Optional[...]`
/// and a module's `TypeVar` among them; a class's annotations) is kept as
/// the same object, so the pause writes nothing for it; but a line that
/// moved (given after the pause), a line inside a function whose first
/// line stayed, and a default equal in value but not in sign all take the
/// new version by the time `apply` returns, and a rollback gives the old
/// lines back.
#[test]
fn what_the_new_version_rebuilt_equal_stays_the_same_object_and_every_moved_line_follows() {
    let sandbox = Sandbox::new();
    sandbox.write("lines.py", LINES_V1);
    sandbox.write("probe.py", &format!("{LINES_PROBE}{PROBE_LOOP}"));
    let mut probe = common::probe(&sandbox, &["--version", "1", "probe.py"]);
    let line = |text: &str, what: &str| (text.lines().position(|l| l.contains(what)).unwrap() + 1).to_string();
    assert_eq!(probe.ask("line_of(lines.inner)"), line(LINES_V1, "raise ValueError(a)"));

    let v2 = lines_v2();
    sandbox.write("lines.py", &v2);
    let spec = "[update]\nname = \"lines-v2\"\nfrom = \"1\"\nto = \"2\"\n\n[[reload]]\nmodule = \"lines\"\n";
    let (code, report) = apply(&sandbox, &probe, spec);
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(probe.ask("ids() == before"), "True");
    assert_eq!(probe.ask("lines.Box().area"), "2");
    assert_eq!(probe.ask("line_of(lines.inner)"), line(&v2, "raise ValueError(a)"));
    assert_eq!(
        probe.ask("line_of(lines.moves)"),
        line(&v2, "raise ValueError(\"moves\")")
    );
    assert_eq!(probe.ask("__import__('math').copysign(1, lines.zero())"), "-1.0");
    assert_eq!(probe.ask("lines.zero.__defaults__[1]"), "{'a': (1, 'b')}");
    // `inner` (a line inside it), `zero` and `moves` only moved: they took
    // their lines after the pause, which the report says. `same` and
    // `typed` stayed where they were; `Box.area` changed.
    assert_eq!(report["moved_after_pause"], 3, "{report:#}");

    let out = sandbox.run(&["rollback", "--socket", probe.socket().to_str().unwrap()]);
    assert!(out.status.success(), "{}", sandbox.transcript());
    assert_eq!(probe.ask("line_of(lines.inner)"), line(LINES_V1, "raise ValueError(a)"));
    assert_eq!(
        probe.ask("line_of(lines.moves)"),
        line(LINES_V1, "raise ValueError(\"moves\")")
    );
    assert_eq!(probe.ask("ids() == before"), "True");
}
