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


def _strip_lines(code):
    consts = tuple(
        _strip_lines(c) if isinstance(c, types.CodeType) else c for c in code.co_consts
    )
    return code.replace(co_firstlineno=1, co_linetable=b"", co_consts=consts)


def same_code(a, b):
    """True when two code objects differ at most in line numbers, so that an
    edit above a function does not report the function as changed."""
    try:
        return _strip_lines(a) == _strip_lines(b)
    except Exception:
        return a == b


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
        return module

    namespace = dict(builtins.__dict__)
    namespace["__import__"] = __import__
    return namespace


def active_frames(code_ids):
    """Threads, other than the caller, that are executing one of the code
    objects whose id() is in `code_ids`.

    Returns [(thread name, qualified name, file, line, stack)] where stack is
    a list of "file:line in function" strings, innermost last.
    """
    names = {t.ident: t.name for t in threading.enumerate()}
    me = threading.get_ident()
    found = []
    for ident, frame in sys._current_frames().items():
        if ident == me:
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
                f.f_code.co_qualname,
                f.f_code.co_filename,
                f.f_lineno,
                lines,
            )
        )
    return found


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
