"""Compares two source trees for `pyreload new`.

Runs in the client's own interpreter, not in any program. Returns plain
data; the Rust side writes the draft spec.
"""

import ast
import os


def _modules(root):
    """{module name: path} for every .py file under root."""
    found = {}
    for directory, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith((".", "__pycache__")))
        for filename in sorted(filenames):
            if not filename.endswith(".py"):
                continue
            path = os.path.join(directory, filename)
            parts = os.path.relpath(path, root)[:-3].split(os.sep)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            if parts and all(p.isidentifier() for p in parts):
                found[".".join(parts)] = path
    return found


def _strip(node):
    """ast.dump without positions, so moving code is not a change."""
    return ast.dump(node, include_attributes=False)


def _imports(tree, module, is_package):
    package = module if is_package else module.rpartition(".")[0]
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".") if package else []
                parts = parts[: len(parts) - node.level + 1] if node.level > 1 else parts
                base = ".".join(p for p in parts + ([node.module] if node.module else []) if p)
            out.add(base)
            out.update(f"{base}.{a.name}" for a in node.names)
    return out


def _functions(tree):
    """{qualified name: dump} of functions and methods, top level and in classes."""
    out = {}

    def visit(body, prefix):
        for node in body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                out[prefix + node.name] = _strip(node)
            elif isinstance(node, ast.ClassDef):
                visit(node.body, prefix + node.name + ".")

    visit(tree.body, "")
    return out


def _layouts(tree):
    """{class name: (bases, slots, instance attributes)}: what live
    instances' layout depends on."""
    out = {}
    for node in tree.body:
        if not isinstance(node, ast.ClassDef):
            continue
        attrs, slots = set(), None
        for item in ast.walk(node):
            if isinstance(item, ast.Attribute) and isinstance(item.ctx, ast.Store):
                if isinstance(item.value, ast.Name) and item.value.id == "self":
                    attrs.add(item.attr)
            if isinstance(item, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__slots__" for t in item.targets):
                slots = _strip(item.value)
        out[node.name] = ([_strip(b) for b in node.bases], slots, attrs)
    return out


def _tables(tree):
    """{name: dump} of top-level assignments of containers and calls: values
    built at import that may be code (a dispatch table) or data."""
    out = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.value, (ast.Dict, ast.List, ast.Set, ast.Call)):
            for target in node.targets:
                # `__all__` and other dunders always take the new value.
                if isinstance(target, ast.Name) and not target.id.startswith("__"):
                    out[target.id] = _strip(node.value)
    return out


def _entry(name, path, old_source, new_source):
    """What changed in one module, or None when nothing did (comments and
    layout are not changes). `old_source` is None for a new module."""
    new_tree = ast.parse(new_source, path)
    is_package = os.path.basename(path) == "__init__.py"
    entry = {"module": name, "path": path, "new": old_source is None, "functions": [], "layouts": [], "tables": [],
             "imports": sorted(_imports(new_tree, name, is_package))}
    if old_source is None:
        return entry
    if old_source == new_source:
        return None
    old_tree = ast.parse(old_source, path)
    if _strip(old_tree) == _strip(new_tree):
        return None  # comments or layout only
    of, nf = _functions(old_tree), _functions(new_tree)
    entry["functions"] = sorted(
        [f"changed {q}" for q in nf if q in of and of[q] != nf[q]]
        + [f"added {q}" for q in nf if q not in of]
        + [f"removed {q}" for q in of if q not in nf]
    )
    ol, nl = _layouts(old_tree), _layouts(new_tree)
    for cls in sorted(set(ol) & set(nl)):
        (ob, os_, oa), (nb, ns, na) = ol[cls], nl[cls]
        notes = []
        if ob != nb:
            notes.append("bases changed")
        if os_ != ns:
            notes.append("__slots__ changed")
        if oa != na:
            notes += [f"+{a}" for a in sorted(na - oa)] + [f"-{a}" for a in sorted(oa - na)]
        if notes:
            entry["layouts"].append((cls, ", ".join(notes)))
    ot, nt = _tables(old_tree), _tables(new_tree)
    entry["tables"] = sorted(n for n in nt if n in ot and ot[n] != nt[n])
    return entry


def _read(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


def _with_new_imports(changed, is_known, find):
    """`changed` plus the modules new to the program that the changed ones
    import, directly or through other new ones (with their packages).
    `is_known(name)`: the program has (or the old tree had) it; `find(name)`:
    its file in the new version, or None (not a module: an attribute, or
    from elsewhere)."""
    out = list(changed)
    seen = {e["module"] for e in out}
    todo = [name for e in out for name in e["imports"]]
    while todo:
        name = todo.pop()
        parts = name.split(".")
        for i in range(1, len(parts) + 1):
            candidate = ".".join(parts[:i])
            if candidate in seen or is_known(candidate):
                continue
            seen.add(candidate)
            path = find(candidate)
            if path is None:
                continue
            entry = _entry(candidate, path, None, _read(path))
            out.append(entry)
            todo.extend(entry["imports"])
    return out


def _ordered(changed):
    """Each module after the changed modules it imports."""
    names = [e["module"] for e in changed]
    ordered, placed = [], set()
    while len(ordered) < len(changed):
        ready = [e for e in changed if e["module"] not in placed and all(
            d not in names or d == e["module"] or d in placed for d in e["imports"])]
        pick = ready[0] if ready else next(e for e in changed if e["module"] not in placed)
        ordered.append(pick)
        placed.add(pick["module"])
    return [(e["module"], e["path"], e["new"], e["functions"], e["layouts"], e["tables"]) for e in ordered]


def compare(old_root, new_root):
    """Changed modules between two trees, plus the new modules they import.
    Returns (modules, removed, left out: new in the tree, imported by no
    changed module)."""
    old, new = _modules(old_root), _modules(new_root)
    changed = []
    for name, path in new.items():
        if name in old:
            entry = _entry(name, path, _read(old[name]), _read(path))
            if entry is not None:
                changed.append(entry)
    changed = _with_new_imports(changed, lambda name: name in old, new.get)
    drafted = {e["module"] for e in changed}
    left_out = sorted(n for n in new if n not in old and n not in drafted)
    removed = sorted(set(old) - set(new))
    return _ordered(changed), removed, left_out


def compare_running(loaded, sys_path):
    """Changed modules of a running program, plus the new modules they
    import. `loaded`: (name, source file, package search path or None,
    the source it runs or None if unchanged) for each loaded module the
    program has a source file for. The new version is each file on disk."""
    by_name = {name: (path, search) for name, path, search, _ in loaded}
    changed = []
    gone = []
    for name, path, _, running in loaded:
        if running is None:
            continue
        if not os.path.exists(path):
            gone.append(name)
            continue
        entry = _entry(name, path, running, _read(path))
        if entry is not None:
            changed.append(entry)
    new_dirs = {}  # new packages: name -> directory
    # A new top-level module is looked for only where a changed module's
    # top-level package lives: new code of the changed library or program
    # (or a dependency installed next to it), not a standard module it
    # starts using, which its import loads as usual.
    roots = []
    for e in changed:
        root = os.path.dirname(e["path"])
        for _ in range(e["module"].count(".") + (os.path.basename(e["path"]) == "__init__.py")):
            root = os.path.dirname(root)
        if root not in roots:
            roots.append(root)

    def find(name):
        parent, _, last = name.rpartition(".")
        if not parent:
            dirs = [d for d in sys_path if os.path.abspath(d or os.getcwd()) in roots]
        elif parent in by_name:
            dirs = by_name[parent][1] or []
        elif parent in new_dirs:
            dirs = [new_dirs[parent]]
        else:
            return None
        for d in dirs:
            d = d or os.getcwd()
            package = os.path.join(d, last, "__init__.py")
            if os.path.isfile(package):
                new_dirs[name] = os.path.dirname(package)
                return package
            module = os.path.join(d, last + ".py")
            if os.path.isfile(module):
                return module
        return None

    changed = _with_new_imports(changed, lambda name: name in by_name, find)
    return _ordered(changed), sorted(gone), []
