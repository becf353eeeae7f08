"""The ``_core.pyi`` stubs describe exactly what the extension exports."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

from fleetwise import _core

STUB = Path(_core.__file__).with_name("_core.pyi") if Path(_core.__file__).with_name("_core.pyi").exists() else Path(__file__).resolve().parents[1] / "python" / "fleetwise" / "_core.pyi"


def _stub_tree():
    return ast.parse(STUB.read_text())


def test_stub_names_match_extension():
    tree = _stub_tree()
    stubbed = {n.name for n in tree.body if isinstance(n, (ast.ClassDef, ast.FunctionDef))}
    exported = {k for k in dir(_core) if not k.startswith("_")}
    assert stubbed == exported


def test_stub_methods_match_classes():
    for node in _stub_tree().body:
        if isinstance(node, ast.ClassDef) and not issubclass(getattr(_core, node.name), BaseException):
            stub_methods = {f.name for f in node.body if isinstance(f, ast.FunctionDef) and not f.name.startswith("__")}
            cls = getattr(_core, node.name)
            real = {k for k, v in inspect.getmembers(cls) if not k.startswith("_") and callable(v)}
            assert stub_methods == real, node.name
