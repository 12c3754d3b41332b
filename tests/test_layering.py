"""The layering import-linter cannot see: routes take what they need as dependencies."""

from __future__ import annotations

import ast
from pathlib import Path

ROUTES = Path(__file__).resolve().parents[1] / "service" / "api" / "routes"


def test_routes_read_no_app_state_directly() -> None:
    # A route reading request.app.state bypassed the dependencies (service/api/deps.py)
    # that tests and the service share.
    found = []
    for path in sorted(ROUTES.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Attribute)
                and node.attr == "state"
                and isinstance(node.value, ast.Attribute)
                and node.value.attr == "app"
            ):
                found.append(f"{path.name}:{node.lineno}")
    assert found == []
