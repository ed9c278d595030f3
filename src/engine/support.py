"""Helpers for pyreload's update engine.

These few functions are simpler in Python than through the C API. The host
runs this file into a private namespace: it is never in sys.modules and the
program cannot see it.
"""

import builtins
import importlib.util
import sys
import threading
import traceback
import types
import weakref


def _strip_lines(code):
    consts = tuple(
        _strip_lines(c) if isinstance(c, types.CodeType) else c for c in code.co_consts
    )
    return code.replace(co_firstlineno=1, co_linetable=b"", co_consts=consts)


def _qualnames(root):
    """{id(code): qualified name} for every code object nested in `root`, a
    module's code. CPython 3.11+ records the name (`co_qualname`); 3.10 does
    not, so it is derived as its compiler does: `Class.method`,
    `outer.<locals>.inner`."""
    out = {}

    def walk(code, prefix, in_function):
        for const in code.co_consts:
            if isinstance(const, types.CodeType):
                q = getattr(const, "co_qualname", None)
                if q is None:
                    if prefix is None:
                        q = const.co_name
                    elif in_function:
                        q = f"{prefix}.<locals>.{const.co_name}"
                    else:
                        q = f"{prefix}.{const.co_name}"
                out[id(const)] = q
                walk(const, q, bool(const.co_flags & _CO_NEWLOCALS))

    walk(root, None, False)
    return out


def _code_name(code):
    """A running code object's qualified name, for messages (on 3.10, which
    does not record it, its plain name)."""
    return getattr(code, "co_qualname", code.co_name)


def _frame_name(frame):
    """The qualified name of the function a frame runs, for messages. On
    3.10 the code does not record it; it is found through the frame's first
    argument (`self` or `cls`) or the module's globals, else the plain name."""
    code = frame.f_code
    q = getattr(code, "co_qualname", None)
    if q is not None:
        return q
    candidates = []
    if code.co_argcount:
        first = frame.f_locals.get(code.co_varnames[0])
        for cls in getattr(first if isinstance(first, type) else type(first), "__mro__", ()):
            candidates.append(cls.__dict__.get(code.co_name))
    candidates.append(frame.f_globals.get(code.co_name))
    for f in candidates:
        f = getattr(f, "__func__", f)
        if getattr(f, "__code__", None) is code:
            return f.__qualname__
    return code.co_name


def _live_qualname(fn):
    """The qualified name of a live function's code, as `_qualnames` gives
    it for the new code. On 3.10 the function's own `__qualname__` stands in
    unless `functools.wraps` copied another function's name onto it: then
    the plain code name (so a wrapper is treated as changed: the cautious
    side)."""
    code = fn.__code__
    q = getattr(code, "co_qualname", None)
    if q is None:
        q = fn.__qualname__
        if q.rpartition(".")[2] != code.co_name:
            q = code.co_name
    return q


def same_code(a, b):
    """True when two code objects differ at most in line numbers, so that an
    edit above a function does not report the function as changed."""
    try:
        return _strip_lines(a) == _strip_lines(b)
    except Exception:
        return a == b


class _PackageOverlay:
    """A package as a staged module body sees it: the submodules the update
    stages come from staging, everything else from the package."""

    def __init__(self, package, children):
        self._package = package
        self._children = children

    def __getattr__(self, name):
        child = self._children.get(name)
        return child if child is not None else getattr(self._package, name)


def staging_builtins(staged):
    """A builtins namespace for running a new module body in staging.

    `from pkg.mod import name` inside the body resolves against the staged
    (new) version of `pkg.mod` when that module is part of the same update,
    so a new module can import a name that only the new version of another
    defines. `sys.modules` is never touched, so other threads keep seeing
    the old modules until the commit.
    """
    real_import = builtins.__import__

    def __import__(name, globals=None, locals=None, fromlist=(), level=0):
        module = real_import(name, globals, locals, fromlist, level)
        if fromlist:
            full = name
            if level:
                package = (globals or {}).get("__package__") or ""
                full = importlib.util.resolve_name("." * level + name, package)
            staging = staged.get(full)
            if staging is not None:
                return staging
            children = {item: staged[f"{full}.{item}"] for item in fromlist if f"{full}.{item}" in staged}
            if children:
                # `from pkg import sub`, where the update stages pkg.sub
                # (perhaps a module new in this version).
                return _PackageOverlay(module, children)
        return module

    namespace = dict(builtins.__dict__)
    namespace["__import__"] = __import__
    return namespace


def active_frames(code_ids, exempt=()):
    """Threads, other than the caller and those in `exempt` (idents of
    threads waiting at an update point), that are executing one of the code
    objects whose id() is in `code_ids`.

    Returns [(thread name, qualified name, file, line, stack)] where stack is
    a list of "file:line in function" strings, innermost last.
    """
    names = {t.ident: t.name for t in threading.enumerate()}
    me = threading.get_ident()
    found = []
    for ident, frame in sys._current_frames().items():
        if ident == me or ident in exempt:
            continue
        f = frame
        while f is not None and id(f.f_code) not in code_ids:
            f = f.f_back
        if f is None:
            continue
        stack = traceback.StackSummary.extract(
            traceback.walk_stack(frame), lookup_lines=False
        )
        lines = [f"{s.filename}:{s.lineno} in {s.name}" for s in reversed(stack)]
        found.append(
            (
                names.get(ident, f"thread {ident}"),
                _frame_name(f),
                f.f_code.co_filename,
                f.f_lineno,
                lines,
            )
        )
    return found


_GENERATOR_FLAGS = 0x20 | 0x80 | 0x100 | 0x200  # GENERATOR, COROUTINE, ITERABLE_COROUTINE, ASYNC_GENERATOR


def is_generator_code(code):
    """Only generator-like code can be suspended off every thread's stack."""
    return bool(code.co_flags & _GENERATOR_FLAGS)


def suspended(codes):
    """Generators, coroutines and async generators that are suspended in one
    of `codes` (a list of code objects), found through the collector.

    Returns [(kind, qualified name, file, line, task)] where task names the
    asyncio task driving a coroutine, or is None.
    """
    import gc

    tasks = {}
    try:
        import asyncio.tasks

        # 3.10 and 3.11 keep every task in `_all_tasks`; 3.12 and 3.13 split
        # them into `_scheduled_tasks` and (eagerly started) `_eager_tasks`.
        for registry in ("_all_tasks", "_scheduled_tasks", "_eager_tasks"):
            for task in list(getattr(asyncio.tasks, registry, ())):
                tasks[id(task.get_coro())] = task.get_name()
    except Exception:
        pass
    wanted = {id(c) for c in codes}
    found = []
    for obj in gc.get_referrers(*codes):
        if isinstance(obj, types.GeneratorType):
            frame, kind = obj.gi_frame, "generator"
        elif isinstance(obj, types.CoroutineType):
            frame, kind = obj.cr_frame, "coroutine"
        elif isinstance(obj, types.AsyncGeneratorType):
            frame, kind = obj.ag_frame, "async generator"
        else:
            continue
        if frame is None or id(frame.f_code) not in wanted:
            continue
        found.append((kind, _frame_name(frame), frame.f_code.co_filename, frame.f_lineno, tasks.get(id(obj))))
    return found


def changed_functions(module, new_code):
    """The live functions and methods of `module` that the new module code
    changes (different code, ignoring line numbers) or no longer defines,
    as [(qualified name, code)]. Found by comparing code objects, not text."""
    new = {}
    names = _qualnames(new_code)
    for code in _code_tree(new_code):
        new.setdefault(names[id(code)], []).append(code)
    name = module.__name__
    seen = set()
    out = []

    def consider(fn, depth=0):
        if not isinstance(fn, types.FunctionType) or fn.__module__ != name or id(fn) in seen:
            return
        seen.add(id(fn))
        code = fn.__code__
        qualname = _live_qualname(fn)
        candidates = new.get(qualname, ())
        if not any(same_code(code, c) for c in candidates):
            out.append((qualname, code))
        # A decorated function's wrapper holds the real function in a cell.
        for cell in fn.__closure__ or ():
            try:
                inner = cell.cell_contents
            except ValueError:
                continue
            if depth < 4:
                consider(inner, depth + 1)

    def visit(namespace, depth):
        for value in list(namespace.values()):
            if isinstance(value, (staticmethod, classmethod)):
                value = value.__func__
            if isinstance(value, property):
                for f in (value.fget, value.fset, value.fdel):
                    consider(f)
            elif isinstance(value, types.FunctionType):
                consider(value)
            elif isinstance(value, type) and value.__module__ == name and id(value) not in seen and depth < 4:
                seen.add(id(value))
                visit(vars(value), depth + 1)

    visit(vars(module), 0)
    return out


def describe_exception(exc, tb, prefer_file=None):
    """(one-line summary, traceback lines, (file, line) of the syntax error,
    or of the innermost frame in `prefer_file`, or of the innermost frame).
    `tb` is passed separately because an exception fetched through the C API
    may not carry its __traceback__ yet."""
    if tb is None:
        tb = exc.__traceback__
    if isinstance(exc, SyntaxError):
        # The snippet shows the file, line and caret; say only what is wrong.
        summary = f"{type(exc).__name__}: {exc.msg}"
    else:
        summary = "".join(traceback.format_exception_only(type(exc), exc)).strip()
    lines = [
        line.rstrip()
        for chunk in traceback.format_exception(type(exc), exc, tb)
        for line in chunk.splitlines()
    ]
    where = None
    if isinstance(exc, SyntaxError) and exc.filename is not None:
        where = (exc.filename, exc.lineno or 1, exc.offset or 1)
    else:
        innermost = preferred = None
        while tb is not None:
            innermost = tb
            if prefer_file is not None and tb.tb_frame.f_code.co_filename == prefer_file:
                preferred = tb
            tb = tb.tb_next
        chosen = preferred or innermost
        if chosen is not None:
            where = (chosen.tb_frame.f_code.co_filename, chosen.tb_lineno, 1)
    return summary, lines, where


CONSTANT_TYPES = (type(None), bool, int, float, complex, str, bytes, type(Ellipsis))


def is_constant(value, depth=0):
    """Plain immutable values: these take the new source's value on reload."""
    t = type(value)
    if t in CONSTANT_TYPES:
        return True
    if t in (tuple, frozenset) and depth < 4:
        return all(is_constant(v, depth + 1) for v in value)
    return False


_DATA_DESCRIPTORS = (types.MemberDescriptorType, types.GetSetDescriptorType)


def is_code_like(value):
    """Functions, classes, modules and descriptors: things a new version of
    the source replaces, as opposed to data the program has built up."""
    if isinstance(value, _DATA_DESCRIPTORS):
        return False
    if isinstance(
        value,
        (
            types.FunctionType,
            types.BuiltinFunctionType,
            types.MethodType,
            staticmethod,
            classmethod,
            property,
            type,
            types.ModuleType,
        ),
    ):
        return True
    if hasattr(value, "__wrapped__"):
        return True
    return hasattr(type(value), "__get__")


def module_source(module):
    """The path of the module's Python source, or None."""
    spec = getattr(module, "__spec__", None)
    origin = getattr(spec, "origin", None) if spec is not None else None
    if origin and origin.endswith(".py"):
        return origin
    path = getattr(module, "__file__", None)
    if path and path.endswith(".py"):
        return path
    return None


def import_named_modules(expression):
    """Import the submodules a spec expression names by dotted path, such as
    `kvserver.health` in `kvserver.health.ok()`, as `import kvserver.health`
    would. Only submodules of packages the program has already loaded are
    imported; an unknown top-level name is left for evaluation to report."""
    import ast
    import importlib

    for node in ast.walk(ast.parse(expression, mode="eval")):
        if not isinstance(node, ast.Attribute):
            continue
        parts = []
        n = node
        while isinstance(n, ast.Attribute):
            parts.append(n.attr)
            n = n.value
        if not isinstance(n, ast.Name) or n.id not in sys.modules:
            continue
        parts.append(n.id)
        parts.reverse()
        for i in range(len(parts), 1, -1):
            name = ".".join(parts[:i])
            if name in sys.modules:
                break
            try:
                importlib.import_module(name)
                break
            except ImportError:
                continue


def check_globals(code):
    """Globals for evaluating a spec expression such as
    `kvserver.health.ok()`: every top-level module whose name it uses."""
    g = {"__builtins__": builtins}
    for name in code.co_names:
        module = sys.modules.get(name)
        if module is not None:
            g[name] = module
    return g


def resolve(path):
    """The object at a dotted path: the longest prefix that is a loaded
    module, then attributes."""
    parts = path.split(".")
    for i in range(len(parts), 0, -1):
        module = sys.modules.get(".".join(parts[:i]))
        if module is not None:
            obj = module
            for attr in parts[i:]:
                obj = getattr(obj, attr)
            return obj
    raise LookupError(f"no module of `{path}` is loaded")


def instances_of(cls):
    """Live instances of `cls` and of its subclasses, found with one walk of
    the collector's objects (instances of heap types refer to their type).
    Instances the collector does not track (of classes with empty
    __slots__ and no __dict__) are not found."""
    import gc

    classes = [cls]
    i = 0
    while i < len(classes):
        classes.extend(classes[i].__subclasses__())
        i += 1
    wanted = set(map(id, classes))
    return [o for o in gc.get_referrers(*classes) if id(type(o)) in wanted]


def _slot_names(cls):
    names = []
    for klass in cls.__mro__:
        slots = klass.__dict__.get("__slots__", ())
        if isinstance(slots, str):
            slots = (slots,)
        names.extend(s for s in slots if s not in ("__dict__", "__weakref__"))
    return names


_MISSING = object()


def save_state(obj, slot_names=None):
    """Everything a transformer may change: the instance dict and slots."""
    if slot_names is None:
        slot_names = tuple(_slot_names(type(obj)))
    # object.__getattribute__: the state as stored, without running a lazy
    # migration's conversion hook.
    get = object.__getattribute__
    try:
        d = get(obj, "__dict__")
    except AttributeError:
        d = None
    slots = None
    if slot_names:
        slots = {}
        for name in slot_names:
            try:
                slots[name] = get(obj, name)
            except AttributeError:
                slots[name] = _MISSING
    return (obj, None if d is None else d.copy(), slots)


def restore_states(saved):
    """Puts back states saved by save_state, newest first."""
    for obj, d, slots in reversed(saved):
        if d is not None:
            current = obj.__dict__
            current.clear()
            current.update(d)
        for name, value in (slots or {}).items():
            if value is _MISSING:
                if hasattr(obj, name):
                    delattr(obj, name)
            else:
                setattr(obj, name, value)


def restore_instance_states(objs, saved):
    """Puts back the states the eager loop saved, newest first: saved[i]
    is a copy of objs[i]'s __dict__, or a save_state tuple."""
    get = object.__getattribute__
    for i in range(len(saved) - 1, -1, -1):
        state = saved[i]
        if type(state) is tuple:
            restore_states([state])
        else:
            current = get(objs[i], "__dict__")
            current.clear()
            current.update(state)


def set_state(obj, state):
    """Applies a transformer's returned state (a dict of attributes)."""
    if hasattr(obj, "__dict__"):
        current = obj.__dict__
        current.clear()
    slots = set(_slot_names(type(obj)))
    for name, value in state.items():
        if name in slots or not hasattr(obj, "__dict__"):
            setattr(obj, name, value)
        else:
            current[name] = value


def _cached_slot_names(cache, cls):
    """A class's slot names, walked once per class: a migration asks for
    every instance, and walking the MRO each time is most of the cost."""
    names = cache.get(cls)
    if names is None:
        names = cache[cls] = tuple(_slot_names(cls))
    return names


def slot_names(cls):
    """The slot names of `cls` and its bases, as save_state takes them."""
    return tuple(_slot_names(cls))


def apply_defaults(obj, defaults):
    """Sets each `defaults` attribute the instance does not have yet, from
    its expression evaluated for this instance."""
    for name, code, g in defaults:
        if not hasattr(obj, name):
            setattr(obj, name, eval(code, g))


def apply_result(obj, result):
    """Applies what a transformer returned, other than None."""
    if not isinstance(result, dict):
        raise TypeError(
            f"the transformer returned {type(result).__name__}; "
            "it must change the instance and return None, or return its new state as a dict"
        )
    set_state(obj, result)


class LazyMigration:
    """Converts the instances of a class on their first use after an update.

    Installed on the class by the commit, in O(1): hooks on attribute
    reads, writes and deletes convert an instance before the access goes
    through, once (the instance's id is then recorded, with a weak
    reference). Instances created after the update are born converted
    (the `__new__` hook records them). Conversion is serialised by one lock,
    so two threads never convert one instance, and a transformer may use its
    own instance freely. Method calls, isinstance, repr and pickling all go
    through attribute access, so they see converted instances.
    """

    HOOKED = ("__getattribute__", "__setattr__", "__delattr__", "__new__")

    def __init__(self, cls, defaults, fn, label):
        self.cls = cls
        self.defaults = defaults
        self.fn = fn
        self.label = label
        self.lock = threading.RLock()
        self.done = {}
        self.ref_keys = {}
        self.converting = {}
        self.slot_cache = {}
        self.in_commit = 0
        self.on_use = 0
        self.by_sweep = 0
        self.failures = []
        self.sweeping = False
        self.quiet = False
        self._base_get = cls.__getattribute__
        self._base_set = cls.__setattr__
        self._base_del = cls.__delattr__
        self._base_new = cls.__new__

    def _forget(self, ref):
        key = self.ref_keys.pop(ref, None)
        if key is not None and self.done.get(key) is ref:
            del self.done[key]

    def mark(self, obj):
        key = id(obj)
        ref = weakref.ref(obj, self._forget)
        self.ref_keys[ref] = key
        self.done[key] = ref

    def is_done(self, obj):
        ref = self.done.get(id(obj))
        return ref is not None and ref() is obj

    def ensure(self, obj):
        # The fast paths take no lock: a converted instance, or an access
        # the converting thread makes itself (the transformer using its own
        # instance). Reading a dict is atomic under the GIL.
        key = id(obj)
        ref = self.done.get(key)
        if ref is not None and ref() is obj:
            return
        if self.converting.get(key) == threading.get_ident():
            return
        with self.lock:
            if self.is_done(obj) or key in self.converting:
                return
            self.converting[key] = threading.get_ident()
            slot_names = _cached_slot_names(self.slot_cache, type(obj))
            saved = save_state(obj, slot_names)
            try:
                for name, code, g in self.defaults:
                    if not hasattr(obj, name):
                        setattr(obj, name, eval(code, g))
                if self.fn is not None:
                    result = self.fn(obj)
                    if result is not None:
                        set_state(obj, result)
                self.mark(obj)
                if self.sweeping:
                    self.by_sweep += 1
                elif self.quiet:
                    self.in_commit += 1
                else:
                    self.on_use += 1
            except BaseException as e:
                restore_states([saved])
                if self.quiet:
                    raise
                self.failures.append(f"{type(e).__name__}: {e}")
                sys.stderr.write(
                    f"pyreload: lazy conversion of a {type(obj).__qualname__} for update `{self.label}` failed, "
                    f"the object keeps its old state: {type(e).__name__}: {e}\n"
                )
                raise
            finally:
                del self.converting[key]

    def hooks(self):
        """The class attributes to install (the commit journals them)."""
        m = self
        base_get, base_set, base_del, base_new = self._base_get, self._base_set, self._base_del, self._base_new

        def __getattribute__(self, name):
            m.ensure(self)
            return base_get(self, name)

        def __setattr__(self, name, value):
            m.ensure(self)
            base_set(self, name, value)

        def __delattr__(self, name):
            m.ensure(self)
            base_del(self, name)

        def __new__(cls, *args, **kwargs):
            obj = base_new(cls) if base_new is object.__new__ else base_new(cls, *args, **kwargs)
            m.mark(obj)
            return obj

        return {
            "__getattribute__": __getattribute__,
            "__setattr__": __setattr__,
            "__delattr__": __delattr__,
            "__new__": staticmethod(__new__),
        }

    def convert_sample(self, saved, objs):
        """In the commit: converts a sample of live instances now, their
        states saved into `saved` (the journal's), so that a transformer that
        cannot work rolls the whole update back instead of failing later on
        first use."""
        self.quiet = True
        try:
            for obj in objs:
                saved.append(save_state(obj))
                self.ensure(obj)
        finally:
            self.quiet = False

    def pending(self):
        """Live instances not converted yet (one walk of the collector's objects)."""
        return [o for o in instances_of(self.cls) if not self.is_done(o)]

    def sweep(self, batch):
        """Converts up to `batch` instances from `pending`; returns how many
        are left. A failing instance is skipped (and logged)."""
        self.sweeping = True
        try:
            while batch and self._queue:
                obj = self._queue.pop()
                try:
                    self.ensure(obj)
                except Exception:
                    pass
                batch -= 1
        finally:
            self.sweeping = False
        return len(self._queue)

    def start_sweep(self):
        self._queue = self.pending()
        return len(self._queue)


_CO_NEWLOCALS = 0x2


def _code_tree(code):
    """Every code object nested in `code`, depth first."""
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield const
            yield from _code_tree(const)


def predict(module, new_code):
    """What reloading `module` from `new_code` will do to its functions and
    classes, found by comparing code objects (ignoring line numbers) without
    running the new code: ({changed, added, removed, unchanged} for
    functions, the same for classes)."""
    name = module.__name__
    new_functions = {}
    new_classes = set()
    names = _qualnames(new_code)
    for code in _code_tree(new_code):
        qualname = names[id(code)]
        if "<" in qualname:
            continue  # lambdas, comprehensions, nested functions
        if code.co_flags & _CO_NEWLOCALS:
            new_functions.setdefault(qualname, []).append(code)
        else:
            new_classes.add(qualname)
    live_functions = {}
    live_classes = set()

    def visit(namespace, depth):
        for value in list(namespace.values()):
            if isinstance(value, (staticmethod, classmethod)):
                value = value.__func__
            if isinstance(value, property):
                candidates = [value.fget, value.fset, value.fdel]
            else:
                candidates = [value]
            for v in candidates:
                if isinstance(v, types.FunctionType) and v.__module__ == name and "<" not in v.__qualname__:
                    live_functions.setdefault(v.__qualname__, v.__code__)
                elif isinstance(v, type) and v.__module__ == name and depth < 4 and v.__qualname__ not in live_classes:
                    live_classes.add(v.__qualname__)
                    visit(vars(v), depth + 1)

    visit(vars(module), 0)
    functions = {"changed": [], "added": [], "removed": [], "unchanged": 0}
    for qualname, code in live_functions.items():
        candidates = new_functions.get(qualname)
        if candidates is None:
            functions["removed"].append(qualname)
        elif any(same_code(code, c) for c in candidates):
            functions["unchanged"] += 1
        else:
            functions["changed"].append(qualname)
    new_only_classes = {c for c in new_classes if c not in live_classes}
    functions["added"] = [
        q for q in new_functions
        if q not in live_functions and not any(q.startswith(c + ".") for c in new_only_classes)
    ]
    touched = {q.rsplit(".", 1)[0] for q in functions["changed"] + functions["added"] + functions["removed"] if "." in q}
    classes = {
        "changed": [c for c in live_classes if c in new_classes and c in touched],
        "added": [c for c in new_classes if c not in live_classes],
        "removed": [c for c in live_classes if c not in new_classes],
        "unchanged": len([c for c in live_classes if c in new_classes and c not in touched]),
    }
    for d in (functions, classes):
        for key in ("changed", "added", "removed"):
            d[key].sort()
    return functions, classes


def imported_modules(code, package):
    """Absolute names of the modules a module body imports from, read from
    its bytecode: `import a.b` gives a.b, `from .c import d` gives pkg.c and
    pkg.c.d (d may be a submodule)."""
    import dis

    found = set()
    level = 0
    fromlist = None
    for ins in dis.get_instructions(code):
        if ins.opname == "LOAD_CONST":
            level, fromlist = fromlist, ins.argval
            continue
        if ins.opname == "IMPORT_NAME":
            lvl = level if isinstance(level, int) else 0
            base = ins.argval
            try:
                full = importlib.util.resolve_name("." * lvl + base, package) if lvl else base
            except (ImportError, ValueError):
                continue
            found.add(full)
            for item in fromlist or ():
                if item != "*":
                    found.add(f"{full}.{item}")
        level = fromlist = None
    return sorted(found)


def modules_for_files(paths):
    """Names of the loaded modules whose source file is one of `paths`, in
    the order to reload them: reverse import order, so that a module
    usually comes after the modules it imports (they finished importing
    first, but were entered later)."""
    import os

    wanted = {os.path.realpath(p) for p in paths}
    found = []
    for name, module in list(sys.modules.items()):
        path = module_source(module)
        if name != "__main__" and path and os.path.realpath(path) in wanted:
            found.append(name)
    return list(reversed(found))


def stored_names(code):
    """Names the module body binds at top level (assignments, imports,
    definitions), read from its bytecode."""
    import dis

    return sorted({i.argval for i in dis.get_instructions(code) if i.opname in ("STORE_NAME", "STORE_GLOBAL")})


def check_transformer(path, new_codes):
    """Why `path` cannot be a transformer (called with one argument), or
    None. `new_codes` maps module names the update reloads to their new
    code: a transformer defined there is checked in the new code."""
    import inspect

    module, _, name = path.rpartition(".")
    code = new_codes.get(module)
    if code is not None:
        for const in code.co_consts:
            if isinstance(const, types.CodeType) and const.co_name == name and _code_name(const) == name:
                takes_varargs = bool(const.co_flags & 0x04)
                if const.co_argcount == 0 and not takes_varargs:
                    return f"`{path}` takes no argument; a transformer is called with one (the instance, or the old value)"
                if const.co_posonlyargcount > 1 or const.co_kwonlyargcount and const.co_argcount == 0:
                    return f"`{path}` cannot be called with one positional argument"
                return None
        return f"the new source of `{module}` defines no function `{name}`"
    try:
        fn = resolve(path)
    except Exception as e:
        return f"`{path}` is not in the program: {e}"
    if not callable(fn):
        return f"`{path}` is not callable"
    try:
        inspect.signature(fn).bind(None)
    except TypeError as e:
        return f"`{path}` cannot be called with one argument: {e}"
    except ValueError:
        pass  # no signature (a builtin): let the call tell
    return None
