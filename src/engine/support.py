"""Helpers for pyreload's update engine.

These few functions are simpler in Python than through the C API. The host
runs this file into a private namespace: it is never in sys.modules and the
program cannot see it.
"""

import builtins
import sys
import _thread


# Threads inside a _PrivateImports: an update's recorder (_Recorder) must
# not take their imports for the update's own, or the commit would publish
# pyreload's private copies (of `enum`, say) into the program.
_PRIVATE_THREADS = {}  # thread id -> how many _PrivateImports it is inside


class _PrivateImports:
    """While open, the modules this thread imports that the program had not
    loaded are for pyreload's helpers alone: closing takes them out of
    sys.modules again (and off their package). So loading the helpers, on
    the first update or `check`, and describing an error (the traceback
    module imports `ast` on the way) leave the program's modules as they
    were. Only `threading` stays, should it be new: its list of threads
    must be the program's."""

    def __init__(self):
        self.thread = _thread.get_ident()
        self.seen = []

    def find_spec(self, name, path=None, target=None):
        if _thread.get_ident() == self.thread:
            self.seen.append(name)
        return None

    def __enter__(self):
        self.before = set(sys.modules)
        self.before_ids = {id(m) for m in list(sys.modules.values())}
        sys.meta_path.insert(0, self)
        _PRIVATE_THREADS[self.thread] = _PRIVATE_THREADS.get(self.thread, 0) + 1
        return self

    def __exit__(self, *exc):
        if _PRIVATE_THREADS.get(self.thread, 0) > 1:
            _PRIVATE_THREADS[self.thread] -= 1
        else:
            _PRIVATE_THREADS.pop(self.thread, None)
        try:
            sys.meta_path.remove(self)
        except ValueError:
            pass
        seen = set(self.seen)
        # Names a package binds in sys.modules itself, to a module the
        # program already had (3.10's `importlib` adds `importlib._bootstrap`,
        # its alias of `_frozen_importlib`; 3.13's `collections/abc.py` makes
        # `collections.abc` the program's `_collections_abc`): no finder
        # saw them. The import also made them attributes of their package.
        for name in set(sys.modules) - self.before:
            if name != "threading" and id(sys.modules.get(name)) in self.before_ids:
                self._detach(name, sys.modules.pop(name), seen)
        for name in reversed(self.seen):
            module = sys.modules.get(name)
            if module is None or name == "threading":
                continue
            del sys.modules[name]
            self._detach(name, module, seen)

    @staticmethod
    def _detach(name, module, seen):
        """Takes `module` off its package, if the package is the program's."""
        package, _, child = name.rpartition(".")
        # A package imported privately keeps its submodules: its own
        # code uses them as attributes (`re` calls `_compiler.compile`).
        if package in seen:
            return
        parent = sys.modules.get(package)
        if parent is not None and vars(parent).get(child) is module:
            delattr(parent, child)
            _DETACHED[(id(parent), child)] = (parent, child, module)


# Private submodules of the program's own packages, taken off them again:
# (id(package), name) -> (package, name, module). A private module may still use one as an
# attribute when it runs (3.12's `traceback` imports `collections.abc` and
# calls `collections.abc.Sequence`), so `_Attached` puts them back for
# as long as such a helper runs.
_DETACHED = {}


class _Attached:
    """While open, the private submodules of the program's packages are
    attributes of them again, as the private code that imported them
    expects; closing takes off those that are still ours."""

    def __enter__(self):
        self.added = []
        for parent, child, module in list(_DETACHED.values()):
            if child not in vars(parent):
                setattr(parent, child, module)
                self.added.append((parent, child, module))
        return self

    def __exit__(self, *exc):
        for parent, child, module in self.added:
            if vars(parent).get(child) is module:
                delattr(parent, child)


def _import_privately(names):
    with _PrivateImports():
        for name in names:
            __import__(name)
        return [sys.modules[name] for name in names]


_LAZY = {}


def _lazy(name):
    """A module only some updates need (`ast`, `inspect`), imported
    privately on first use: the first update pays for what it uses."""
    module = _LAZY.get(name)
    if module is None:
        module = _LAZY[name] = _import_privately([name])[0]
    return module


(
    dis,
    gc,
    importlib,
    _machinery,
    _util,
    itertools,
    linecache,
    threading,
    tokenize,
    traceback,
    types,
    weakref,
) = _import_privately(
    [
        "dis",
        "gc",
        "importlib",
        "importlib.machinery",
        "importlib.util",
        "itertools",
        "linecache",
        "threading",
        "tokenize",
        "traceback",
        "types",
        "weakref",
    ]
)


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


def moved_code(a, b):
    """True when two code objects differ only in where their lines are:
    the same bytecode, constants, names, file and qualified names, nested
    code too. Only tracebacks, line events and `inspect` can tell them
    apart, so the merge gives such code to a live function once the
    program runs again instead of in the pause (merge.rs, `moved`)."""
    try:
        return _strip_lines(a) == _strip_lines(b) and _same_names(a, b)
    except Exception:
        return False


def _same_names(a, b):
    if a.co_filename != b.co_filename or getattr(a, "co_qualname", None) != getattr(b, "co_qualname", None):
        return False
    return all(
        _same_names(x, y)
        for x, y in zip(a.co_consts, b.co_consts)
        if isinstance(x, types.CodeType) and isinstance(y, types.CodeType)
    )


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
                full = _util.resolve_name("." * level + name, package)
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

    Returns [(thread name, ident, qualified name, file, line, stack)] where
    stack is a list of "file:line in function" strings, innermost last.
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
                ident,
                _frame_name(f),
                f.f_code.co_filename,
                f.f_lineno,
                lines,
            )
        )
    return found


def callers_of(ident, code_ids):
    """(native thread id or 0, the outermost frame on thread `ident`'s stack
    running a code in `code_ids`, the code objects of the frames older than
    it): once the thread runs an instruction in one of these, it has left
    every such frame. (0, None, []) if it runs none (any more)."""
    thread = threading._active.get(ident)
    native = getattr(thread, "native_id", None) or 0
    frame = sys._current_frames().get(ident)
    frames = []
    while frame is not None:
        frames.append(frame)
        frame = frame.f_back
    inside = [i for i, f in enumerate(frames) if id(f.f_code) in code_ids]
    if not inside:
        return native, None, []
    outermost = inside[-1]
    callers = [f.f_code for f in frames[outermost + 1 :] if id(f.f_code) not in code_ids]
    return native, frames[outermost], callers


_GENERATOR_FLAGS = 0x20 | 0x80 | 0x100 | 0x200  # GENERATOR, COROUTINE, ITERABLE_COROUTINE, ASYNC_GENERATOR


def is_generator_code(code):
    """Only generator-like code can be suspended off every thread's stack."""
    return bool(code.co_flags & _GENERATOR_FLAGS)


# The generators, coroutines and async generators of the last full walk
# (`_generators_of`), for the codes it was made for.
_WALKED = None  # (codes, collections, freeze count, [weak references])

_GENERATOR_TYPES = (types.GeneratorType, types.CoroutineType, types.AsyncGeneratorType)
_GENERATOR_TYPE_SET = frozenset(_GENERATOR_TYPES)


def _promotions():
    """How many collections could have moved an object out of the two
    youngest generations: those of generation 1 (into 2) and 2."""
    stats = gc.get_stats()
    return stats[1]["collections"] + stats[2]["collections"]


def _generators_of(codes, settle=False):
    """Every generator, coroutine and async generator whose code is one of
    `codes` (and a few other objects that refer to them), without walking
    the whole heap more than once per update.

    The first call walks every object the collector tracks. A later call for
    the same codes needs only the objects made since and the generators
    found before (a generator's code never changes). An object made since
    is in one of the two youngest generations unless a collection of
    generation 1 or 2 (or gc.freeze) ran since: then the heap is walked
    again. Staging ends with such a walk (the program running), so the
    safe-point check in the stopped world does not grow with the heap.

    `settle` (the call at the end of staging, the program running): the
    two youngest generations are collected too (after the young objects
    are looked through, or before the heap is walked), as the program's
    own allocations would soon have them collected, so that the stopped
    world looks only through what was made since, not the thousands of
    young objects a busy program holds (2,500 and 0.3 to 0.5 ms of a
    1.5 ms pause, a jinja2 upgrade under one client). Not when the
    program disabled the collector: that is its choice to keep."""
    global _WALKED
    codes = tuple(codes)
    if _WALKED is not None and len(_WALKED[0]) == len(codes) and all(a is b for a, b in zip(_WALKED[0], codes)):
        if _WALKED[1] == _promotions() and _WALKED[2] == gc.get_freeze_count():
            wanted = {id(c) for c in codes}
            # This runs in the stopped world, over every young object: the
            # type test is made by C loops (map, compress), not per object
            # in Python, which halves it (generator types have no subclasses).
            young = []
            for generation in (0, 1):
                objs = gc.get_objects(generation=generation)
                young += [
                    o
                    for o in itertools.compress(objs, map(_GENERATOR_TYPE_SET.__contains__, map(type, objs)))
                    if id(_code_of(o)) in wanted
                ]
            known = [o for o in (r() for r in _WALKED[3]) if o is not None]
            found = known + young
            if settle and gc.isenabled():
                # Every such generator is in `found` now: the young ones
                # can go to the oldest generation, and the walk stands.
                gc.collect(1)
                _WALKED = (codes, _promotions(), gc.get_freeze_count(), [weakref.ref(o) for o in found])
            return found
    if settle and gc.isenabled():
        gc.collect(1)
    walked = [o for o in gc.get_referrers(*codes) if isinstance(o, _GENERATOR_TYPES)]
    _WALKED = (codes, _promotions(), gc.get_freeze_count(), [weakref.ref(o) for o in walked])
    return walked


def _code_of(obj):
    if isinstance(obj, types.GeneratorType):
        return obj.gi_code
    if isinstance(obj, types.CoroutineType):
        return obj.cr_code
    return obj.ag_code


def suspended(codes, settle=False):
    """Generators, coroutines and async generators that are suspended in one
    of `codes` (a list of code objects), found through the collector.

    Returns [(kind, qualified name, file, line, task)] where task names the
    asyncio task driving a coroutine, or is None.
    """

    tasks = {}
    # A program that never imported asyncio has no tasks; importing it here
    # would change the program and, on a loaded machine, take the wait's
    # whole timeout.
    asyncio_tasks = sys.modules.get("asyncio.tasks")
    try:
        if asyncio_tasks is not None:
            # 3.10 and 3.11 keep every task in `_all_tasks`; 3.12 and 3.13
            # split them into `_scheduled_tasks` and (eagerly started)
            # `_eager_tasks`.
            for registry in ("_all_tasks", "_scheduled_tasks", "_eager_tasks"):
                for task in list(getattr(asyncio_tasks, registry, ())):
                    tasks[id(task.get_coro())] = task.get_name()
    except Exception:
        pass
    wanted = {id(c) for c in codes}
    found = []
    for obj in _generators_of(codes, settle):
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


# ---------------------------------------------------------------------------
# The modules only an update needs


_ABSENT = object()

# The UpdateImports of the update in progress (updates run one at a time),
# so that looking things up and describing errors see its staged modules.
_ACTIVE = None


class _FreshLoader(_machinery.SourceFileLoader):
    """Loads a module for an update from its source, every time: never from
    a cached .pyc, which a quick edit (same size, same second) leaves
    looking valid. Remembers the text it compiled, so that a traceback
    shows the lines that really ran."""

    def get_code(self, fullname):
        path = self.get_filename(fullname)
        data = self.get_data(path)
        imports = _ACTIVE
        if imports is not None:
            # Not importlib's decode_source, which imports tokenize: that
            # may be the module being loaded.
            import io

            encoding, _ = tokenize.detect_encoding(io.BytesIO(data).readline)
            imports.sources[path] = data.decode(encoding, "replace").replace("\r\n", "\n")
        return self.source_to_code(data, path)


def _installed(path):
    """Whether `path` is part of the interpreter's installation: the
    standard library or site-packages. Installers keep the bytecode of those
    files in step with them, and a big new dependency loads many times
    faster from its cached bytecode; only the program's own files, which
    people edit, are compiled afresh."""
    import os

    global _PREFIXES
    if _PREFIXES is None:
        roots = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}
        try:
            import site

            roots.update(site.getsitepackages())
            roots.add(site.getusersitepackages())
        except Exception:
            pass
        _PREFIXES = tuple(os.path.join(os.path.realpath(r), "") for r in roots if r)
    return bool(path) and os.path.realpath(path).startswith(_PREFIXES)


_PREFIXES = None


class _Recorder:
    """A finder at the front of sys.meta_path that notes every module the
    update's thread imports (and finds nothing itself, for other threads)."""

    def __init__(self, imports, thread):
        self.imports = imports
        self.thread = thread

    def find_spec(self, name, path=None, target=None):
        if threading.get_ident() != self.thread or self.thread in _PRIVATE_THREADS:
            return None
        for finder in list(sys.meta_path):
            find = getattr(finder, "find_spec", None)
            if finder is self or find is None:
                continue
            spec = find(name, path, target)
            if spec is not None:
                self.imports._record(name, spec)
                return spec
        return None

    def invalidate_caches(self):
        pass


def _cannot_unload(module):
    """Built-in and extension (C) modules: CPython never unloads them, and
    some refuse to initialise twice, so they stay once imported."""
    spec = getattr(module, "__spec__", None)
    loader = getattr(spec, "loader", None)
    return getattr(spec, "origin", None) == "built-in" or isinstance(
        loader, _machinery.ExtensionFileLoader
    )


def _invalidate_caches():
    """What importlib.invalidate_caches() does, without importing
    importlib.metadata into the program: CPython 3.13's
    PathFinder.invalidate_caches imports it (and with it inspect, ast,
    json, zipfile, ...) to clear its caches, which only matter once the
    program has it."""
    external = sys.modules["_frozen_importlib_external"]
    for finder in list(sys.meta_path):
        if finder is external.PathFinder:
            for name, entry in list(sys.path_importer_cache.items()):
                if entry is None or not external._path_isabs(name):
                    del sys.path_importer_cache[name]
                elif hasattr(entry, "invalidate_caches"):
                    entry.invalidate_caches()
            external._NamespacePath._epoch += 1
            # Only 3.13's PathFinder clears importlib.metadata's caches
            # (before, its invalidate_caches is not even callable on the
            # class).
            metadata = sys.modules.get("importlib.metadata")
            if metadata is not None and sys.version_info >= (3, 13):
                metadata.MetadataPathFinder.invalidate_caches()
        elif hasattr(finder, "invalidate_caches"):
            finder.invalidate_caches()


class UpdateImports:
    """The modules an update imports that the program had not: transformer
    modules, submodules a condition or check names, new dependencies of the
    new code. Like modules new in the version, they are staged: imported
    while the update prepares or stages, then taken out of sys.modules (and
    off their package) until the commit publishes them. A refused update,
    `check` and `diff` leave sys.modules, packages and linecache as they
    were, and the next update imports these modules afresh from disk.

    Only the update's own thread is recorded: imports the program makes
    meanwhile are its own."""

    def __init__(self):
        global _ACTIVE
        _ACTIVE = self
        self.modules = {}  # name -> module, in import order: staged
        self.parents = {}  # name -> (package, its attribute before the import)
        self.sources = {}  # file -> the source text that ran
        self._recorder = None
        self._names = []
        self._lines = None
        self.shown = False

    def ran(self, path, text):
        """Notes the text the update compiled for `path`."""
        self.sources[path] = text

    def begin(self):
        """Starts recording the imports this thread makes."""
        _invalidate_caches()  # see files created within the second
        self._names = []
        self._lines = set(linecache.cache)
        self._recorder = _Recorder(self, threading.get_ident())
        sys.meta_path.insert(0, self._recorder)

    def _record(self, name, spec):
        if type(spec.loader) is _machinery.SourceFileLoader and not _installed(spec.origin):
            spec.loader = _FreshLoader(spec.loader.name, spec.loader.path)
        package, _, child = name.rpartition(".")
        parent = sys.modules.get(package) if package else None
        if parent is not None and name not in self.parents:
            self.parents[name] = (parent, vars(parent).get(child, _ABSENT))
        self._names.append(name)

    def end(self):
        """Stops recording and withdraws every staged module. Returns the
        names staged by this recording."""
        try:
            sys.meta_path.remove(self._recorder)
        except ValueError:
            pass
        self._recorder = None
        added = []
        for name in self._names:
            module = sys.modules.get(name)
            if module is None or name in self.modules or _cannot_unload(module):
                continue
            self.modules[name] = module
            added.append(name)
        self._withdraw()
        files = set(self.sources)
        files.update(getattr(m, "__file__", None) for m in self.modules.values())
        for key in set(linecache.cache) - (self._lines or set()):
            if key in files:
                linecache.cache.pop(key, None)
        return added

    def show(self):
        """Puts the staged modules back, for the new module bodies to import
        while staging (end() withdraws them again). A module the program has
        imported itself in the meantime is the program's: it stays, and the
        update uses it."""
        for name, module in list(self.modules.items()):
            present = sys.modules.get(name)
            if present is not None and present is not module:
                del self.modules[name]
                continue
            sys.modules[name] = module
            if name in self.parents:
                setattr(self.parents[name][0], name.rpartition(".")[2], module)
        self.shown = True

    def _withdraw(self):
        for name, module in reversed(list(self.modules.items())):
            if sys.modules.get(name) is module:
                del sys.modules[name]
            saved = self.parents.get(name)
            if saved is None or name.rpartition(".")[0] in self.modules:
                continue
            parent, old = saved
            child = name.rpartition(".")[2]
            if vars(parent).get(child, _ABSENT) is not module:
                continue
            if old is _ABSENT:
                delattr(parent, child)
            else:
                setattr(parent, child, old)
        self.shown = False

    def staged(self):
        """[(name, module)] in import order, for the commit to publish."""
        return list(self.modules.items())

    def close(self):
        """The update is over: stop being the active one."""
        global _ACTIVE
        if self._recorder is not None or self.shown:
            self.end()
        if _ACTIVE is self:
            _ACTIVE = None


def _staged_module(name):
    imports = _ACTIVE
    return None if imports is None else imports.modules.get(name)


def _with_staged(name, module):
    """`module` as an expression sees it while the update is staged: with
    the staged submodules as attributes, though the package has none yet."""
    imports = _ACTIVE
    if imports is None or not imports.modules:
        return module
    prefix = name + "."
    children = {}
    for full in imports.modules:
        if not full.startswith(prefix):
            continue
        child = full[len(prefix):].split(".")[0]
        sub = prefix + child
        # The program's own copy, if it has imported the module meanwhile:
        # the commit keeps that one.
        inner = sys.modules.get(sub) or imports.modules.get(sub)
        if inner is not None and child not in children:
            children[child] = _with_staged(sub, inner)
    return _PackageOverlay(module, children) if children else module


def update_imports():
    return UpdateImports()


def gc_module():
    """The collector's module, without importing it into the program."""
    return gc


class _TrueLines:
    """While describing an exception: linecache holds the text each of the
    update's files had when it was compiled, not what is on disk now. Put
    back as it was afterwards."""

    def __init__(self, tb):
        self.saved = {}
        imports = _ACTIVE
        self.sources = {} if imports is None else imports.sources
        while tb is not None:
            path = tb.tb_frame.f_code.co_filename
            text = self.sources.get(path)
            if text is not None and path not in self.saved:
                self.saved[path] = linecache.cache.get(path, _ABSENT)
                # mtime None: checkcache() leaves the entry alone.
                linecache.cache[path] = (len(text), None, text.splitlines(True), path)
            tb = tb.tb_next

    def restore(self):
        for path, old in self.saved.items():
            if old is _ABSENT:
                linecache.cache.pop(path, None)
            else:
                linecache.cache[path] = old


def describe_exception(exc, tb, prefer_file=None):
    """(one-line summary, traceback lines, (file, line) of the syntax error,
    or of the innermost frame in `prefer_file`, or of the innermost frame,
    the text of that file as the update compiled it, or None).
    Lines of the update's files are shown as they ran, not as they are on
    disk now.
    `tb` is passed separately because an exception fetched through the C API
    may not carry its __traceback__ yet."""
    if tb is None:
        tb = exc.__traceback__
    lines_guard = _TrueLines(tb)
    cached = set(linecache.cache)
    try:
        with _PrivateImports(), _Attached():
            summary, lines, where = _describe(exc, tb, prefer_file)
    finally:
        lines_guard.restore()
        # Reading files for the traceback is no reason to keep them cached.
        for path in set(linecache.cache) - cached:
            linecache.cache.pop(path, None)
    text = lines_guard.sources.get(where[0]) if where is not None else None
    return summary, lines, where, text


def _describe(exc, tb, prefer_file):
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

    ast = _lazy("ast")
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


def import_module_of(path):
    """Imports the module of a dotted path such as a transformer's
    (`pkg.migrate.fix`), top level included, as `import` would: the longest
    prefix that is a module. A module that exists but fails to import
    raises."""
    parts = path.split(".")
    for i in range(len(parts) - 1, 0, -1):
        name = ".".join(parts[:i])
        if name in sys.modules:
            return
        try:
            importlib.import_module(name)
            return
        except ModuleNotFoundError as e:
            # Not a module (or its package is not): try a shorter prefix.
            # A module that imports something missing is a real error.
            if e.name is None or not (name == e.name or name.startswith(e.name + ".")):
                raise


def check_globals(code):
    """Globals for evaluating a spec expression such as
    `kvserver.health.ok()`: every top-level module whose name it uses."""
    g = {"__builtins__": builtins}
    for name in code.co_names:
        module = sys.modules.get(name) or _staged_module(name)
        if module is not None:
            g[name] = _with_staged(name, module)
    return g


def resolve(path):
    """The object at a dotted path: the longest prefix that is a loaded
    (or staged) module, then attributes."""
    parts = path.split(".")
    for i in range(len(parts), 0, -1):
        name = ".".join(parts[:i])
        module = sys.modules.get(name) or _staged_module(name)
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
    through, once. Instances created after the update are born converted
    (the `__new__` hook marks them). Conversion is serialised by one lock,
    so two threads never convert one instance, and a transformer may use its
    own instance freely. Method calls, isinstance, repr and pickling all go
    through attribute access, so they see converted instances.

    The marks, and the three attribute hooks, are C (src/engine/lazy.rs,
    `table`): a hook's fast path, for an instance that needs nothing, runs
    no Python. This class does the conversion itself, the slow path.
    """

    HOOKED = ("__getattribute__", "__setattr__", "__delattr__", "__new__")

    def __init__(self, cls, defaults, fn, label, table):
        self.cls = cls
        self.defaults = defaults
        self.fn = fn
        self.label = label
        self.table = table
        self.lock = threading.RLock()
        # weak reference -> id of its instance, whose mark it forgets.
        self.refs = {}
        self.slot_cache = {}
        self.in_commit = 0
        self.on_use = 0
        self.by_sweep = 0
        self.failures = []
        self.quiet = False
        self._base_get = cls.__getattribute__
        self._base_set = cls.__setattr__
        self._base_del = cls.__delattr__
        self._base_new = cls.__new__

    def _forget(self, ref):
        key = self.refs.pop(ref, None)
        if key is not None:
            self.table.forget(key)

    def watch(self, obj):
        """A weak reference that forgets `obj`'s mark when it dies, so that
        no later object at its address inherits it."""
        self.refs[weakref.ref(obj, self._forget)] = id(obj)

    def mark(self, obj):
        self.table.mark(obj)
        self.watch(obj)

    def ensure(self, obj):
        table = self.table
        if not table.needs(obj):
            return
        with self.lock:
            if not table.claim(obj):
                return
            converted = False
            try:
                saved = save_state(obj, _cached_slot_names(self.slot_cache, type(obj)))
                try:
                    for name, code, g in self.defaults:
                        if not hasattr(obj, name):
                            setattr(obj, name, eval(code, g))
                    if self.fn is not None:
                        result = self.fn(obj)
                        if result is not None:
                            set_state(obj, result)
                    self.watch(obj)
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
                converted = True
                if self.quiet:
                    self.in_commit += 1
                else:
                    self.on_use += 1
            finally:
                table.settle(obj, converted)

    def hooks(self):
        """The class attributes to install (the commit journals them)."""
        m = self
        base_new = self._base_new
        table = self.table

        def __new__(cls, *args, **kwargs):
            obj = base_new(cls) if base_new is object.__new__ else base_new(cls, *args, **kwargs)
            m.mark(obj)
            return obj

        return {
            "__getattribute__": table.hook("__getattribute__", self.cls, self.ensure, self._base_get),
            "__setattr__": table.hook("__setattr__", self.cls, self.ensure, self._base_set),
            "__delattr__": table.hook("__delattr__", self.cls, self.ensure, self._base_del),
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

    # The sweep after the pause is src/engine/sweep.rs: it converts the
    # instances not converted yet in batches, under this migration's lock,
    # and marks them in `table`.


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

    found = set()
    level = 0
    fromlist = None
    # Imports under `if TYPE_CHECKING:` (or `typing.`/`t.TYPE_CHECKING`)
    # never run: they are for type checkers, and a package's modules often
    # import each other there.
    checking_at = None
    skip_until = -1
    for ins in dis.get_instructions(code):
        if ins.argval == "TYPE_CHECKING" and ins.opname in ("LOAD_NAME", "LOAD_GLOBAL", "LOAD_ATTR"):
            checking_at = ins.offset
            continue
        if checking_at is not None:
            if ins.opname.startswith("POP_JUMP") and "IF_FALSE" in ins.opname and isinstance(ins.argval, int):
                skip_until = ins.argval
            if ins.opname not in ("TO_BOOL", "CACHE"):
                checking_at = None
        if ins.offset < skip_until:
            continue
        if ins.opname == "LOAD_CONST":
            level, fromlist = fromlist, ins.argval
            continue
        if ins.opname == "IMPORT_NAME":
            lvl = level if isinstance(level, int) else 0
            base = ins.argval
            try:
                full = _util.resolve_name("." * lvl + base, package) if lvl else base
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

    return sorted({i.argval for i in dis.get_instructions(code) if i.opname in ("STORE_NAME", "STORE_GLOBAL")})


def literal_updates(module, code):
    """For `check`: the globals a reload from `code` will update as plain
    constants, found without running it. A name counts when the module body
    binds it exactly once, straight from a literal (`VERSION = "2.0"`), and
    its running value is a different constant. A constant the body computes
    is not predicted."""

    stores = {}
    literals = {}
    previous = None
    for ins in dis.get_instructions(code):
        if ins.opname in ("STORE_NAME", "STORE_GLOBAL"):
            stores[ins.argval] = stores.get(ins.argval, 0) + 1
            if previous is not None and previous.opname == "LOAD_CONST" and not ins.is_jump_target:
                literals[ins.argval] = previous.argval
        previous = ins
    live = vars(module)
    updated = []
    for name, new in literals.items():
        if stores[name] != 1 or name not in live or name.startswith("__"):
            continue
        old = live[name]
        if is_constant(new) and is_constant(old) and not (old is new or (type(old) is type(new) and old == new)):
            updated.append(name)
    return sorted(updated)


def check_transformer(path, new_codes):
    """Why `path` cannot be a transformer (called with one argument), or
    None. `new_codes` maps module names the update reloads to their new
    code: a transformer defined there is checked in the new code."""

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
        _lazy("inspect").signature(fn).bind(None)
    except TypeError as e:
        return f"`{path}` cannot be called with one argument: {e}"
    except ValueError:
        pass  # no signature (a builtin): let the call tell
    return None


# ---- copies of a reloaded module's names in other modules ----
#
# `from m import NAME [as ALIAS]` and `from m import *` copy m's values into
# the importer's globals. Which importer copied what from whom is read from
# the importers' own sources (their module-level `from ... import`
# statements), so that an alias, or two names bound from one attribute, are
# found, and an importer's own assignment that happens to hold an equal
# value is not. This runs in prepare, with the program running; the commit
# only re-checks identity for the few copies found.

_FROM_RE = None
_STDLIB = None
# path -> (mtime_ns, size, package, mentioned modules, table or None)
_IMPORT_TABLES = {}


def _module_level(body):
    """The statements of a module body that run at import time: into if,
    try, with, for, while and match blocks, but not into functions or
    classes (their imports bind local names)."""
    ast = _lazy("ast")

    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            continue
        yield node
        for field in ("body", "orelse", "finalbody", "handlers"):
            sub = getattr(node, field, None)
            if isinstance(sub, list):
                yield from _module_level(sub)
        if isinstance(node, ast.Match):
            for case in node.cases:
                yield from _module_level(case.body)


def _resolve_from(raw, package):
    level = len(raw) - len(raw.lstrip("."))
    if not level:
        return raw
    try:
        return importlib.util.resolve_name(raw, package or "")
    except (ImportError, ValueError):
        return None


def _import_table(path, package, wanted):
    """[(alias, module, name)] for the module-level `from module import name
    as alias` statements of the source at `path` (name "*" for a star
    import), or [] when none names a module in `wanted`. Cached by the
    file's size and modification time: only files that mention a wanted
    module in a `from ... import` line are parsed."""
    import os

    ast = _lazy("ast")
    re = _lazy("re")

    global _FROM_RE
    if _FROM_RE is None:
        _FROM_RE = re.compile(r"^[ \t]*from[ \t]+([.\w]+)[ \t]+import\b", re.M)
    try:
        st = os.stat(path)
    except OSError:
        return []
    entry = _IMPORT_TABLES.get(path)
    if entry is None or tuple(entry[:3]) != (st.st_mtime_ns, st.st_size, package):
        try:
            with open(path, "rb") as f:
                text = f.read().decode("utf-8", "replace")
        except OSError:
            return []
        mentioned = {_resolve_from(raw, package) for raw in _FROM_RE.findall(text)}
        entry = [st.st_mtime_ns, st.st_size, package, mentioned, None, text]
        _IMPORT_TABLES[path] = entry
    if not (entry[3] & wanted):
        entry[5] = None
        return []
    if entry[4] is None:
        text = entry[5]
        if text is None:
            try:
                with open(path, "rb") as f:
                    text = f.read().decode("utf-8", "replace")
            except OSError:
                return []
        table = []
        try:
            tree = ast.parse(text, path)
        except (SyntaxError, ValueError):
            tree = None
        if tree is not None:
            for node in _module_level(tree.body):
                if isinstance(node, ast.ImportFrom):
                    full = _resolve_from("." * node.level + (node.module or ""), package)
                    if full is None:
                        continue
                    for a in node.names:
                        table.append((a.asname or a.name, full, a.name))
        entry[4] = table
        entry[5] = None
    return entry[4]


def _is_stdlib(name, path, stdlib):
    """A standard library module: it cannot import the program's modules."""
    top = name.partition(".")[0]
    if top not in getattr(sys, "stdlib_module_names", ()):
        return False
    return bool(stdlib) and path.startswith(stdlib) and "-packages" not in path


def public_names(namespace):
    """The names `from m import *` copies: `__all__`, or every name not
    starting with an underscore."""
    names = namespace.get("__all__")
    if names is not None:
        return [n for n in names if isinstance(n, str)]
    return [n for n in namespace if not n.startswith("_")]


def find_copies(updated):
    """Who copied what from the modules an update reloads.

    `updated` is [(name, module or None)] in plan order (None for a module
    new in this update). Returns (copies, stars): copies are (importer,
    importer's globals, alias, index in `updated`, name) for every
    module-level `from m import name as alias` (and every name a
    `from m import *` copied) whose binding is still the very object
    `m.name` holds; stars are (importer, importer's globals, index) for
    every `from m import *`. The modules of the update itself are not
    importers here: their new bodies import the new values."""
    index = {name: i for i, (name, module) in enumerate(updated) if module is not None}
    if not index:
        return [], []
    global _STDLIB
    if _STDLIB is None:
        import os

        # The directory of a pure-Python standard module (sysconfig would
        # say the same, at a few milliseconds' import).
        _STDLIB = os.path.dirname(os.__file__) + os.sep
    wanted = set(index)
    stdlib = _STDLIB
    copies, stars, seen = [], [], set()
    for importer, module in list(sys.modules.items()):
        if importer in index or module is None:
            continue
        namespace = getattr(module, "__dict__", None)
        if not isinstance(namespace, dict):
            continue
        path = module_source(module)
        if path is None or _is_stdlib(importer, path, stdlib):
            continue
        package = namespace.get("__package__")
        for alias, full, name in _import_table(path, package, wanted):
            i = index.get(full)
            if i is None:
                continue
            source = vars(updated[i][1])
            if name == "*":
                if (importer, i) in seen:
                    continue
                seen.add((importer, i))
                stars.append((importer, namespace, i))
                pairs = [(n, n) for n in public_names(source)]
            else:
                pairs = [(alias, name)]
            for alias, name in pairs:
                if (importer, alias) in seen or name not in source or alias not in namespace:
                    continue
                if namespace[alias] is source[name]:
                    seen.add((importer, alias))
                    copies.append((importer, namespace, alias, i, name))
    return copies, stars


def flag_pseudo_members(old_values, new_values):
    """The composite members of a Flag enum (`R|W`) cached in its old
    `_value2member_map_` that stay valid in the new one: every bit of the
    value is still the very same member. The program may hold them, so the
    new table keeps them, and `held == Perm.R | Perm.W` stays true."""
    out = []
    for value, member in old_values.items():
        if not isinstance(value, int) or value < 0 or value in new_values:
            continue
        bits, ok = value, True
        while bits:
            bit = bits & -bits
            bits ^= bit
            new = new_values.get(bit)
            if new is None or new is not old_values.get(bit):
                ok = False
                break
        if ok:
            out.append((value, member))
    return out
