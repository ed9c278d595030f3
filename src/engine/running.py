"""For `pyreload new --running`: the program's loaded modules and where
their sources are. Runs in the program and only reads."""

import os
import sys


def loaded_modules():
    """(absolute sys.path, [(name, source file as the loader named it, the
    same made absolute, package search path or None, frozen)]) for every
    loaded module with a Python source file, and every package."""
    out = []
    for name, module in list(sys.modules.items()):
        try:
            spec = getattr(module, "__spec__", None)
            origin = getattr(spec, "origin", None) if spec is not None else None
            path = origin if isinstance(origin, str) and origin.endswith(".py") else getattr(module, "__file__", None)
            if not (isinstance(path, str) and path.endswith(".py")):
                path = None
            search = getattr(module, "__path__", None)
            search = [os.path.abspath(p) for p in search] if search is not None else None
            if path is None and search is None:
                continue
            out.append((name, path, os.path.abspath(path) if path else None, search, origin == "frozen"))
        except Exception:
            continue  # an odd object in sys.modules: not a module to compare
    return [os.path.abspath(p) if p else os.getcwd() for p in sys.path], out
