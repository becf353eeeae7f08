"""The ``_core.pyi`` stubs describe exactly what the extension exports: the same names, and for every
function, constructor and method the same parameters (names, kinds, which have defaults, and the
default values where both sides can show them), read from pyo3's ``__text_signature__``."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

from fleetwise import _core

STUB = Path(_core.__file__).with_name("_core.pyi") if Path(_core.__file__).with_name("_core.pyi").exists() else Path(__file__).resolve().parents[1] / "python" / "fleetwise" / "_core.pyi"

_UNSHOWN = object()
"""A default the signature does not show (``...`` in a stub or a text signature)."""


def _stub_tree():
    return ast.parse(STUB.read_text())


def _stub_default(node: ast.expr):
    try:
        value = ast.literal_eval(node)
    except ValueError:
        return _UNSHOWN
    return _UNSHOWN if value is Ellipsis else value


def _stub_params(fn: ast.FunctionDef, method: bool) -> list[tuple[str, inspect._ParameterKind, object]]:
    """(name, kind, default) of each parameter of a stub function, ``self`` left out for methods;
    the default is ``inspect.Parameter.empty`` when there is none."""
    a = fn.args
    positional = [*a.posonlyargs, *a.args]
    defaults = [inspect.Parameter.empty] * (len(positional) - len(a.defaults)) + [_stub_default(d) for d in a.defaults]
    out = [(p.arg, inspect.Parameter.POSITIONAL_ONLY if i < len(a.posonlyargs) else inspect.Parameter.POSITIONAL_OR_KEYWORD, d)
           for i, (p, d) in enumerate(zip(positional, defaults))]
    if a.vararg:
        out.append((a.vararg.arg, inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.empty))
    out += [(p.arg, inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.empty if d is None else _stub_default(d)) for p, d in zip(a.kwonlyargs, a.kw_defaults)]
    if a.kwarg:
        out.append((a.kwarg.arg, inspect.Parameter.VAR_KEYWORD, inspect.Parameter.empty))
    return out[1:] if method else out


def _real_params(obj, method: bool) -> list[tuple[str, inspect._ParameterKind, object]] | None:
    """The same for the compiled object, or None when it exposes no signature."""
    try:
        sig = inspect.signature(obj)
    except (ValueError, TypeError):
        return None
    out = [(p.name, p.kind, _UNSHOWN if p.default is Ellipsis else p.default) for p in sig.parameters.values()]
    return out[1:] if method else out


def _same(stub: list, real: list) -> bool:
    if [(n, k, d is inspect.Parameter.empty) for n, k, d in stub] != [(n, k, d is inspect.Parameter.empty) for n, k, d in real]:
        return False
    return all(s == r for (_, _, s), (_, _, r) in zip(stub, real) if s is not _UNSHOWN and r is not _UNSHOWN)


def _signature_cases():
    """(label, stub parameters, compiled object, is a method) for every stubbed callable."""
    for node in _stub_tree().body:
        if isinstance(node, ast.FunctionDef):
            yield node.name, _stub_params(node, method=False), getattr(_core, node.name), False
        elif isinstance(node, ast.ClassDef) and not issubclass(getattr(_core, node.name), BaseException):
            cls = getattr(_core, node.name)
            for f in node.body:
                if not isinstance(f, ast.FunctionDef):
                    continue
                if f.name == "__init__":
                    yield f"{node.name}()", _stub_params(f, method=True), cls, False
                elif not f.name.startswith("__"):
                    yield f"{node.name}.{f.name}", _stub_params(f, method=True), getattr(cls, f.name), True


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


@pytest.mark.parametrize("label,stub,obj,method", [pytest.param(*case, id=case[0]) for case in _signature_cases()])
def test_stub_signatures_match_extension(label, stub, obj, method):
    real = _real_params(obj, method)
    if real is None:
        pytest.skip(f"{label}: the extension exposes no signature")
    assert _same(stub, real), f"{label}: stub {stub} != extension {real}"


def test_signature_check_sees_differences():
    """The comparison fails on a renamed, missing or re-defaulted parameter."""
    fn = ast.parse("def f(a: int, b: int = 1, c: str = ...) -> None: ...").body[0]
    stub = _stub_params(fn, method=False)
    same = [("a", inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.empty),
            ("b", inspect.Parameter.POSITIONAL_OR_KEYWORD, 1), ("c", inspect.Parameter.POSITIONAL_OR_KEYWORD, "x")]
    assert _same(stub, same)
    assert not _same(stub, [("x", *same[0][1:]), *same[1:]])
    assert not _same(stub, same[:2])
    assert not _same(stub, [same[0], (*same[1][:2], 2), same[2]])
    assert not _same(stub, [same[0], (*same[1][:2], inspect.Parameter.empty), same[2]])
