"""The command line as a user runs it: tokens, and one clear line for each user error."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.api import create_app
from service.settings import Settings
from tests.support import free_port, run_cli, serving

READ = "read-token-0123456789abcdef"
WRITE = "write-token-0123456789abcdef"


@pytest.fixture
def secured_url(settings: Settings) -> Iterator[str]:
    """A service with a read and a write token, over real HTTP; nothing trains."""
    secured = settings.model_copy(update={"api_tokens": [f"read:{READ}", f"write:{WRITE}"]})
    with serving(create_app(secured, supervise=False)) as url:
        yield url


def _spec(tmp_path: Path, name: str) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(f"name: {name}\ntask: synthetic\nn_trials: 3\n")
    return path


def _one_line(stderr: str) -> str:
    assert "Traceback" not in stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    return lines[0]


def test_the_cli_sends_a_token_from_the_option_the_variable_or_the_file(
    secured_url: str, tmp_path: Path
) -> None:
    refused = run_cli("studies", "--url", secured_url)
    assert refused.returncode == 2
    line = _one_line(refused.stderr)
    assert line.startswith("helios-hpo: 401 ")
    assert "--token" in line
    assert "HELIOS_HPO_TOKEN" in line

    created = run_cli("submit", str(_spec(tmp_path, "a")), "--url", secured_url, "--token", WRITE)
    assert created.returncode == 0, created.stderr
    assert "created study 'a'" in created.stdout

    by_variable = run_cli("studies", env={"HELIOS_HPO_URL": secured_url, "HELIOS_HPO_TOKEN": READ})
    assert by_variable.returncode == 0, by_variable.stderr
    assert by_variable.stdout.split()[:2] == ["a", "synthetic"]

    token_file = tmp_path / "token"
    token_file.write_text(f"{WRITE}\n")
    env = {"HELIOS_HPO_URL": secured_url, "HELIOS_HPO_TOKEN_FILE": str(token_file)}
    by_file = run_cli("submit", str(_spec(tmp_path, "b")), env=env)
    assert by_file.returncode == 0, by_file.stderr
    shown = run_cli("studies", "b", env=env)
    assert json.loads(shown.stdout)["name"] == "b"

    read_only = run_cli("submit", str(_spec(tmp_path, "c")), "--url", secured_url, "--token", READ)
    assert read_only.returncode == 2
    line = _one_line(read_only.stderr)
    assert line.startswith("helios-hpo: 403 a read token cannot POST")
    assert "HELIOS_HPO_TOKEN" in line
    listing = run_cli("studies", "--url", secured_url, "--token", READ).stdout
    assert [row.split()[0] for row in listing.splitlines()] == ["b", "a"]  # no 'c'

    missing = tmp_path / "no-token-here"
    unreadable = run_cli("studies", env={**env, "HELIOS_HPO_TOKEN_FILE": str(missing)})
    assert unreadable.returncode == 2
    assert _one_line(unreadable.stderr) == (
        f"helios-hpo: cannot read HELIOS_HPO_TOKEN_FILE {missing}: No such file or directory"
    )


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        ("absent.yaml", None, "cannot read {path}: no such file"),
        ("bad.yaml", "name: x\ntask: [synthetic\n", "{path} line 3, column 1: "),
        ("bad.json", '{"name": "x",\n "task": }', "{path} line 2, column 10: Expecting value"),
        ("list.yaml", "- name: x\n", "{path}: a study spec is a mapping"),
        ("empty.yaml", "", "{path}: a study spec is a mapping (name: ..., task: ...); it is empty"),
        (
            "nan.yaml",
            "name: x\ntask: synthetic\ntimeout_s: .nan\n",
            "{path} line 3, column 12: NaN and infinity",
        ),
        ("twice.json", '{"name": "x", "task": "synthetic", "name": "y"}', "{path}: duplicate key"),
        ("twice.yaml", "name: x\ntask: synthetic\nname: y\n", "{path} line 3, column 1: duplicate"),
        # A key of bytes was a traceback (TypeError on writing the JSON).
        (
            "bytes-key.yaml",
            "? !!binary Ym93bA==\n: x\n",
            "{path} line 1, column 3: tags (!!binary)",
        ),
    ],
)
def test_a_spec_that_cannot_be_read_is_one_line_and_exit_code_2(
    tmp_path: Path, name: str, content: str | None, expected: str
) -> None:
    path = tmp_path / name
    if content is not None:
        path.write_text(content)
    # The port answers nothing: the spec is read before the service is called.
    result = run_cli("submit", str(path), "--url", f"http://127.0.0.1:{free_port()}")
    assert result.returncode == 2
    assert _one_line(result.stderr).startswith("helios-hpo: " + expected.format(path=path))


def test_an_unreachable_service_is_one_line_that_says_what_to_check(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    for args in (("studies",), ("studies", "x"), ("submit", str(_spec(tmp_path, "x")))):
        result = run_cli(*args, "--url", url)
        assert result.returncode == 2, args
        line = _one_line(result.stderr)
        assert line.startswith(f"helios-hpo: cannot reach {url}/studies"), line
        assert "helios-hpo serve" in line
        assert "HELIOS_HPO_URL" in line


def _node(tmp_path: Path, kind: str) -> Path:
    path = tmp_path / kind
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "device":  # the device /dev/null is, made here (root only)
        os.mknod(path, 0o600 | stat.S_IFCHR, os.makedev(1, 3))
    elif kind == "folder":
        path.mkdir()
    elif kind == "link":
        path.symlink_to(tmp_path / "elsewhere.pt")
    return path


@pytest.mark.parametrize(
    ("kind", "says"),
    [
        ("fifo", "it is a FIFO; give a new file name or a regular file"),
        ("device", "it is a character device"),
        ("folder", "it is a folder"),
        ("link", "it is a symbolic link"),
        ("missing/best.pt", "no folder"),
    ],
)
def test_model_writes_only_a_regular_file_or_a_new_path(
    tmp_path: Path, kind: str, says: str
) -> None:
    # -o PATH replaced whatever node PATH was (a FIFO became a regular file; as root a
    # device file would be replaced); a missing folder was a traceback.
    if kind == "device" and os.geteuid() != 0:
        pytest.skip("making a device file needs root")
    path = _node(tmp_path, kind) if "/" not in kind else tmp_path / kind
    before = path.lstat() if os.path.lexists(path) else None
    result = run_cli("model", "s", "-o", str(path), "--url", f"http://127.0.0.1:{free_port()}")
    assert result.returncode == 2
    line = _one_line(result.stderr)
    assert line.startswith(f"helios-hpo: cannot write {path}: "), line
    assert says in line
    assert "Traceback" not in result.stderr
    if before is not None:
        after = path.lstat()
        assert (after.st_mode, after.st_ino) == (before.st_mode, before.st_ino)
    assert not list(tmp_path.rglob("*.part"))
