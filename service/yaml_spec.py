"""Study specs written in YAML, turned into the JSON the API validates.

Aliases are refused: a few hundred bytes of nested aliases expand to gigabytes. Tags
beyond YAML's own types are refused by the safe loader.
"""

from __future__ import annotations

import json
from typing import Any

import yaml

__all__ = ["YamlSpecError", "yaml_to_json"]


class YamlSpecError(ValueError):
    """The text is not a YAML document a spec can be; the message says where and why."""


class _NoAliasLoader(yaml.SafeLoader):
    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()  # type: ignore[no-untyped-call]
            raise yaml.composer.ComposerError(
                None, None, "aliases (*name) are not accepted in a spec", event.start_mark
            )
        return super().compose_node(parent, index)


def yaml_to_json(text: str) -> str:
    """The YAML document ``text`` as JSON text (dates become strings)."""
    try:
        data = yaml.load(text, Loader=_NoAliasLoader)  # noqa: S506 (a SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise YamlSpecError(f"{where}{exc.problem or exc.context}") from None
    except yaml.YAMLError as exc:
        raise YamlSpecError(str(exc)) from None
    except RecursionError:
        raise YamlSpecError("nested too deeply") from None
    try:
        return json.dumps(data, allow_nan=False, default=str)
    except ValueError:
        raise YamlSpecError("NaN and infinity are not valid numbers in a spec") from None
    except RecursionError:
        raise YamlSpecError("nested too deeply") from None
