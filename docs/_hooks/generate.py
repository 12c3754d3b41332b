"""MkDocs hooks: pages whose reference parts are generated from the code, so that they
cannot drift from it. A page holds a marker line, replaced at build time:

- ``<!-- generated: settings -->``: every ``HELIOS_HPO_*`` setting with its default and
  the description its field in ``service/settings.py`` gives;
- ``<!-- generated: openapi -->``: every route of the HTTP API from its OpenAPI schema;
- ``<!-- generated: cli -->``: every ``helios-hpo`` command's ``--help``;
- ``<!-- generated: client -->``: the Python client's methods and what each does.

A setting without a description fails the build.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

MARKER = "<!-- generated: {} -->"


def on_page_markdown(markdown: str, **_: Any) -> str:
    for name, render in (
        ("settings", settings_table),
        ("openapi", api_reference),
        ("cli", cli),
        ("client", client_methods),
    ):
        marker = MARKER.format(name)
        if marker in markdown:
            markdown = markdown.replace(marker, render())
    return markdown


def _default(field: Any) -> str:
    if field.default is not PydanticUndefined:
        value = field.default
    elif field.default_factory is not None:
        value = field.default_factory()
    else:
        return "required"
    if value is None or value == [] or value == {}:
        return "none" if value is None else "empty"
    if hasattr(value, "get_secret_value"):
        return "hidden"
    text = json.dumps(value, default=str) if isinstance(value, list | dict) else str(value)
    return f"`{text.replace(sys.executable, 'python')}`"


def _rows(model: type[BaseModel], prefix: str) -> list[str]:
    rows = []
    for name, field in model.model_fields.items():
        group = field.annotation
        if isinstance(group, type) and issubclass(group, BaseModel) and name in ("docker", "slurm"):
            rows += _rows(group, f"{prefix}{name.upper()}_")
            continue
        if not field.description:
            raise ValueError(f"setting {prefix}{name.upper()} has no description in its Field")
        description = " ".join(field.description.split()).replace("|", "\\|")
        rows.append(f"| `{prefix}{name.upper()}` | {_default(field)} | {description} |")
    return rows


def settings_table() -> str:
    from service.settings import Settings

    prefix = Settings.model_config.get("env_prefix", "")
    lines = ["| variable | default | meaning |", "| --- | --- | --- |", *_rows(Settings, prefix)]
    return "\n".join(lines)


def _schema_name(schema: dict[str, Any]) -> str:
    if "$ref" in schema:
        return str(schema["$ref"]).rsplit("/", 1)[-1]
    if schema.get("type") == "array":
        return f"list of {_schema_name(schema.get('items', {}))}"
    return str(schema.get("type", "object"))


def api_reference() -> str:
    from service.api import create_app
    from service.settings import Settings

    spec = create_app(Settings(), supervise=False).openapi()
    out = []
    for path, methods in spec["paths"].items():
        for method, op in methods.items():
            out.append(f"### `{method.upper()} {path}`\n")
            out.append(" ".join((op.get("description") or op.get("summary", "")).split()) + "\n")
            params = op.get("parameters", [])
            if params:
                out.append("| parameter | in | required | description |")
                out.append("| --- | --- | --- | --- |")
                for p in params:
                    about = " ".join((p.get("description") or "").split()).replace("|", "\\|")
                    required = "yes" if p.get("required") else "no"
                    out.append(f"| `{p['name']}` | {p['in']} | {required} | {about} |")
                out.append("")
            body = op.get("requestBody", {}).get("content", {}).get("application/json")
            if body:
                out.append(f"Body: `{_schema_name(body['schema'])}` (JSON, or YAML).\n")
            codes = ", ".join(
                f"{code} {' '.join(r.get('description', '').split())}"
                for code, r in op.get("responses", {}).items()
            )
            out.append(f"Responses: {codes}.\n")
    return "\n".join(out)


def cli() -> str:
    import argparse

    from service.cli import _parser

    parser = _parser()
    out = ["```text", parser.format_help().rstrip(), "```", ""]
    for action in parser._actions:  # noqa: SLF001 (argparse has no public way to list them)
        if isinstance(action, argparse._SubParsersAction):  # noqa: SLF001
            for name, sub in action.choices.items():
                out += [f"### `helios-hpo {name}`", "", "```text", sub.format_help().rstrip()]
                out += ["```", ""]
    return "\n".join(out)


def client_methods() -> str:
    import inspect

    from service.client import Client

    out = ["| method | what it does |", "| --- | --- |"]
    for name, member in inspect.getmembers(Client, inspect.isfunction):
        if name.startswith("_") or name == "close":
            continue
        doc = " ".join((inspect.getdoc(member) or "").split("\n\n")[0].split())
        signature = str(inspect.signature(member)).replace("self, ", "").replace("(self)", "()")
        doc = doc.replace("|", "\\|")
        out.append(f"| `{name}{signature}` | {doc} |")
    return "\n".join(out)
