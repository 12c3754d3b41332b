"""Request bodies and spec files checked before the API validates them: strict JSON, and
JSON-compatible YAML turned into JSON.

YAML is read as plain data in the YAML 1.2 core schema: strings, numbers, true/false,
null, lists and mappings with string keys. Whatever YAML 1.1 would turn into something
else is refused or stays a string: tags (``!!binary``, ``!!set``, ``!!python/...``),
aliases (a few hundred bytes of nested aliases expand to gigabytes), several documents;
``1:20`` and ``2024-01-01`` are strings. In both languages a key given twice and
nesting deeper than ``MAX_DEPTH`` are refused, where and why said. The events come from
libyaml when PyYAML has it: parsing costs time linear in the body's size.
"""

from __future__ import annotations

import json
import re
from typing import Any

import yaml

__all__ = ["MAX_DEPTH", "BodyError", "YamlSpecError", "check_json", "yaml_to_json"]

MAX_DEPTH = 64  # levels of lists and mappings; a spec needs about six


class BodyError(ValueError):
    """The body is not data a spec can be; the message says where and why."""


class YamlSpecError(BodyError):
    """The text is not a JSON-compatible YAML document."""


_NULL = re.compile(r"~|null|Null|NULL|")
_BOOL = {"true": True, "True": True, "TRUE": True, "false": False, "False": False, "FALSE": False}
_INT = re.compile(r"[-+]?[0-9]+")
_OCT = re.compile(r"0o[0-7]+")
_HEX = re.compile(r"0x[0-9a-fA-F]+")
_FLOAT = re.compile(r"[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?")
_NOT_FINITE = re.compile(r"[-+]?\.(inf|Inf|INF)|\.(nan|NaN|NAN)")
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _where(mark: Any) -> str:
    return f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else "the body"


def _plain(value: str, mark: Any) -> Any:
    """A plain (unquoted) scalar as the YAML 1.2 core schema reads it."""
    if _NULL.fullmatch(value):
        return None
    if value in _BOOL:
        return _BOOL[value]
    if _INT.fullmatch(value):
        return int(value)
    if _OCT.fullmatch(value):
        return int(value[2:], 8)
    if _HEX.fullmatch(value):
        return int(value[2:], 16)
    if _FLOAT.fullmatch(value):
        return float(value)
    if _NOT_FINITE.fullmatch(value):
        raise YamlSpecError(f"{_where(mark)}: NaN and infinity are not valid numbers in a spec")
    return value


class _Builder:
    """Lists, mappings and scalars from the parser's events.

    ``stack`` holds each open container with the key its next value goes under (a
    mapping's; None before the key, and always for a list); a key stays while its
    value, a container, is open, so the path to any point is read from the stack.
    """

    def __init__(self) -> None:
        self.stack: list[list[Any]] = []  # [container, key]
        self.root: Any = None
        self.documents = 0

    def add(self, value: Any, mark: Any, *, opens: bool = False) -> None:
        if not self.stack:
            self.root = value
            return
        top = self.stack[-1]
        container, key = top
        if isinstance(container, list):
            container.append(value)
        elif key is None:  # a mapping's key
            if not isinstance(value, str):
                raise YamlSpecError(
                    f"{_where(mark)}: keys must be strings, not {value!r}; quote the key"
                )
            if value in container:
                raise YamlSpecError(f"{_where(mark)}: duplicate key {self._path(value)!r}")
            top[1] = value
        else:
            container[key] = value
            if not opens:
                top[1] = None

    def open(self, container: Any, mark: Any) -> None:
        if len(self.stack) >= MAX_DEPTH:
            raise YamlSpecError(f"{_where(mark)}: nested too deeply (over {MAX_DEPTH} levels)")
        self.add(container, mark, opens=True)
        self.stack.append([container, None])

    def close(self) -> None:
        self.stack.pop()
        if self.stack:
            self.stack[-1][1] = None  # the container was its parent's value

    def _path(self, key: str) -> str:
        parts = [k if isinstance(c, dict) else len(c) - 1 for c, k in self.stack[:-1]]
        return ".".join(map(str, [*parts, key]))


def _refuse_tag(event: Any) -> None:
    if (tag := event.tag) not in (None, "!"):
        tag = tag.replace("tag:yaml.org,2002:", "!!")
        raise YamlSpecError(
            f"{_where(event.start_mark)}: tags ({tag}) are not accepted: write plain "
            "JSON-compatible values"
        )


def yaml_to_json(text: str) -> str:
    """The YAML document ``text`` as JSON text.

    Raises:
        YamlSpecError: where (line and column) and why it is not a JSON-compatible document.
    """
    builder = _Builder()
    try:
        for event in yaml.parse(text, Loader=_Loader):
            if isinstance(event, yaml.DocumentStartEvent):
                builder.documents += 1
                if builder.documents > 1:
                    raise YamlSpecError(
                        f"{_where(event.start_mark)}: one document only (no second '---')"
                    )
            elif isinstance(event, yaml.AliasEvent):
                raise YamlSpecError(
                    f"{_where(event.start_mark)}: aliases (*name) are not accepted in a spec"
                )
            elif isinstance(event, yaml.ScalarEvent):
                _refuse_tag(event)
                plain = not event.style and event.tag is None  # libyaml: '', PyYAML: None
                value = _plain(event.value, event.start_mark) if plain else event.value
                builder.add(value, event.start_mark)
            elif isinstance(event, yaml.SequenceStartEvent | yaml.MappingStartEvent):
                _refuse_tag(event)
                container: list[Any] | dict[str, Any] = (
                    [] if isinstance(event, yaml.SequenceStartEvent) else {}
                )
                builder.open(container, event.start_mark)
            elif isinstance(event, yaml.SequenceEndEvent | yaml.MappingEndEvent):
                builder.close()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = str(exc.problem or exc.context)
        if "nesting depth" in problem:  # libyaml's own limit, met before ours
            problem = f"nested too deeply (over {MAX_DEPTH} levels)"
        raise YamlSpecError(f"{where}{problem}") from None
    except yaml.YAMLError as exc:
        raise YamlSpecError(str(exc)) from None
    return json.dumps(builder.root)


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    data = dict(pairs)
    if len(data) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise BodyError(f"duplicate key {key!r}")
            seen.add(key)
    return data


def _too_deep(data: Any) -> bool:
    level = [data]
    for _ in range(MAX_DEPTH):
        level = [
            child
            for node in level
            if isinstance(node, dict | list)
            for child in (node.values() if isinstance(node, dict) else node)
        ]
    return any(isinstance(node, dict | list) for node in level)


def check_json(body: bytes) -> None:
    """Refuse a JSON body that gives a key twice or nests deeper than ``MAX_DEPTH``; a
    body that is not JSON at all is left for the API to report (with its byte offset).

    Raises:
        BodyError: which key, or how deep.
    """
    try:
        data = json.loads(body, object_pairs_hook=_pairs)
    except RecursionError:
        raise BodyError(f"nested too deeply (over {MAX_DEPTH} levels)") from None
    except BodyError:
        raise
    except ValueError:
        return
    if _too_deep(data):
        raise BodyError(f"nested too deeply (over {MAX_DEPTH} levels)")
