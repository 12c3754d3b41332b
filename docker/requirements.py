"""Print the requirements of this project and the extras named, read from pyproject.toml.

The images install them in a layer of their own before the sources are copied, so that
a change to helios/ or service/ rebuilds only the project's layer, not its dependencies.
Usage: python3 requirements.py pyproject.toml service dashboard
"""

from __future__ import annotations

import re
import sys
import tomllib


def requirements(pyproject: dict, extras: list[str]) -> list[str]:
    """The build system's, the project's and the extras' requirements; an extra that names
    the project itself (``name[other]``) brings the other extras' requirements."""
    project = pyproject["project"]
    itself = re.compile(rf"{re.escape(project['name'])}\[([^\]]+)\]")
    found = [*pyproject["build-system"]["requires"], *project["dependencies"]]
    wanted, seen = list(extras), set()
    while wanted:
        extra = wanted.pop()
        if extra in seen:
            continue
        seen.add(extra)
        for requirement in project["optional-dependencies"][extra]:
            nested = itself.fullmatch(requirement.replace(" ", ""))
            if nested:
                wanted += nested.group(1).split(",")
            else:
                found.append(requirement)
    return found


if __name__ == "__main__":
    with open(sys.argv[1], "rb") as file:
        sys.stdout.write("\n".join(requirements(tomllib.load(file), sys.argv[2:])) + "\n")
