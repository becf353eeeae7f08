"""Reading scenario YAML defensively: size, encoding, nesting and alias expansion are checked
before anything is validated, and offending values are quoted in error messages only in part.

A scenario is small and shallow; a file that is not (a billion-laughs alias bomb, thousands of
nested brackets, binary data) is refused here with a ``ConfigError`` naming the file and, where it
can, the line, instead of hanging the validator or raising ``RecursionError``.
"""

from __future__ import annotations

import reprlib
from typing import Any, NoReturn

import yaml

from fleetwise.config.limits import (
    MAX_REPR_CHARS,
    MAX_YAML_BYTES,
    MAX_YAML_DEPTH,
    MAX_YAML_NODES,
)

FAST_SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
"""PyYAML's safe loader in C (libyaml) where PyYAML was built with it, else the pure-Python one:
the same documents, parsed several times faster (the catalogues are read once per process)."""


def _fail(message: str) -> NoReturn:
    from fleetwise.errors import ConfigError

    raise ConfigError(message)


_REPR = reprlib.Repr()
_REPR.maxstring = MAX_REPR_CHARS
_REPR.maxother = MAX_REPR_CHARS
_REPR.maxlevel = 3
_REPR.maxdict = _REPR.maxlist = _REPR.maxtuple = _REPR.maxset = 6


def short_repr(value: Any) -> str:
    """``repr(value)``, cut to a few hundred characters whatever the size or depth of ``value``
    (an error message quotes what the user wrote, never all of it)."""
    text = _REPR.repr(value)
    if len(text) > 2 * MAX_REPR_CHARS:
        text = text[: 2 * MAX_REPR_CHARS] + "..."
    return text


def decode_text(data: bytes, source: str) -> str:
    """``data`` decoded as UTF-8 (a leading byte-order mark dropped); ``ConfigError`` naming
    ``source``, the line and the byte offset of the first invalid byte, or of a NUL byte."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        _fail(f"{source}: line {line}: not UTF-8 text (invalid byte 0x{data[exc.start]:02x} at byte offset {exc.start})")
    nul = data.find(b"\0")
    if nul >= 0:
        line = data.count(b"\n", 0, nul) + 1
        _fail(f"{source}: line {line}: binary data (NUL byte at byte offset {nul}); a scenario is YAML text")
    return text


class _BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing documents nested deeper than ``MAX_YAML_DEPTH`` (its composer
    recurses once per level, so a deep document would otherwise raise ``RecursionError``)."""

    _depth = 0

    def compose_node(self, parent, index):  # noqa: D401 - PyYAML's hook
        """Composes one node, refusing it when it lies deeper than ``MAX_YAML_DEPTH`` levels."""
        self._depth += 1
        try:
            if self._depth > MAX_YAML_DEPTH:
                mark = self.peek_event().start_mark
                raise yaml.YAMLError(_DeepError(mark))
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


    def compose_mapping_node(self, anchor):  # noqa: D401 - PyYAML's hook
        """Composes a mapping, refusing a key written twice in it (PyYAML keeps the last one
        silently: ``requests: 50`` then ``requests: 5000000`` ran five million). Checked on the
        mapping as written, before merges (``<<: *base``) are applied: keys a merge brings in may
        be overridden, as YAML intends."""
        node = super().compose_mapping_node(anchor)
        seen: dict = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(key_node, yaml.ScalarNode):
                continue
            key = (key_node.tag, key_node.value)
            if key in seen:
                raise yaml.YAMLError(_DuplicateKey(key_node.start_mark, key_node.value, seen[key]))
            seen[key] = key_node.start_mark.line + 1
        return node

    def construct_sexagesimal_as_text(self, node):
        """A YAML 1.1 number written with colons (``1:30``, read as 90 by PyYAML) stays text, so
        that a number field refuses it instead of running with a value nobody wrote."""
        if ":" in str(node.value):
            return self.construct_scalar(node)
        tag = node.tag.rsplit(":", 1)[-1]
        return yaml.SafeLoader.construct_yaml_int(self, node) if tag == "int" else yaml.SafeLoader.construct_yaml_float(self, node)


_BoundedLoader.add_constructor("tag:yaml.org,2002:int", _BoundedLoader.construct_sexagesimal_as_text)
_BoundedLoader.add_constructor("tag:yaml.org,2002:float", _BoundedLoader.construct_sexagesimal_as_text)


class _DeepError:
    """Marks a ``YAMLError`` raised by ``_BoundedLoader`` for nesting too deep."""

    def __init__(self, mark) -> None:
        self.mark = mark


class _DuplicateKey:
    """Marks a ``YAMLError`` raised by ``_BoundedLoader`` for a key written twice in a mapping."""

    def __init__(self, mark, key, first_line: int) -> None:
        self.mark, self.key, self.first_line = mark, key, first_line


def load_yaml(text: str, source: str) -> Any:
    """``text`` parsed as YAML (safe types only) and checked by ``check_shape``. Raises
    ``yaml.YAMLError`` for invalid YAML, and ``ConfigError`` naming ``source`` (and the line) for
    text over ``MAX_YAML_BYTES``, nesting deeper than ``MAX_YAML_DEPTH`` or more than
    ``MAX_YAML_NODES`` values once aliases are expanded."""
    if len(text) > MAX_YAML_BYTES:
        _fail(f"{source}: {len(text)} characters; a scenario may have at most {MAX_YAML_BYTES}")
    loader = _BoundedLoader(text)
    try:
        data = loader.get_single_data()
    except yaml.YAMLError as err:
        inner = err.args[0] if err.args else None
        if isinstance(inner, _DeepError):
            _fail(f"{source}, line {inner.mark.line + 1}: too deeply nested (more than {MAX_YAML_DEPTH} levels)")
        if isinstance(inner, _DuplicateKey):
            _fail(f"{source}, line {inner.mark.line + 1}: {short_repr(inner.key)} is given twice in one mapping (first at line "
                  f"{inner.first_line}); keep one")
        raise
    except RecursionError:
        _fail(f"{source}: too deeply nested (more than {MAX_YAML_DEPTH} levels)")
    finally:
        loader.dispose()
    check_shape(data, source)
    return data


def parse_yaml(text: str, source: str) -> Any:
    """``load_yaml``, with invalid YAML also a ``ConfigError`` naming ``source`` and the line."""
    try:
        return load_yaml(text, source)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f", line {mark.line + 1}" if mark is not None else ""
        _fail(f"{source}{where}: invalid YAML: {getattr(err, 'problem', None) or err}")


def check_shape(data: Any, source: str) -> None:
    """``ConfigError`` naming ``source`` when ``data`` (parsed YAML or JSON) is nested deeper than
    ``MAX_YAML_DEPTH``, refers to itself, or holds more than ``MAX_YAML_NODES`` values once shared
    sub-values (YAML aliases) are counted at every place they appear. Takes time linear in the
    distinct values, however large the expansion."""
    sizes: dict[int, int] = {}
    active: set[int] = set()

    def size(node: Any, depth: int, path: str) -> int:
        if not isinstance(node, (dict, list)):
            return 1
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in active:
            _fail(f"{source}: {path or '(top level)'}: refers to itself (a cyclic YAML alias)")
        if depth > MAX_YAML_DEPTH:
            _fail(f"{source}: {path}: too deeply nested (more than {MAX_YAML_DEPTH} levels)")
        active.add(key)
        items = node.items() if isinstance(node, dict) else enumerate(node)
        total = 1
        for k, child in items:
            total += size(child, depth + 1, f"{path}.{k}" if path else str(k))
            if total > MAX_YAML_NODES:
                _fail(
                    f"{source}: {path or '(top level)'}: more than {MAX_YAML_NODES} values once YAML "
                    "aliases are expanded (an alias bomb?); a scenario holds a few hundred"
                )
        active.discard(key)
        sizes[key] = total
        return total

    size(data, 0, "")
