"""The service from Python: ``Client(url, token)`` calls its HTTP API.

Every method returns the API's JSON as plain dicts and lists; every failure, from a
refused connection to a 422, raises :class:`ServiceError` with the service's ``code``,
``detail`` and field errors.

    with Client("http://127.0.0.1:8000", token="...") as client:
        client.create_study({"name": "demo", "task": "digits", "n_trials": 20})
        study = client.wait("demo", progress=True)
        best = client.best("demo")
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import logging
import os
import stat
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from service.settings import DEFAULT_URL

__all__ = ["Client", "Download", "ServiceError", "TargetError", "follow_study"]

Summary = dict[str, Any]
CREATE_TIMEOUT_S = 600.0  # creating a study copies its warm starts before it answers
AWAY_S = 120.0  # how long wait() asks again a service that does not answer
log = logging.getLogger(__name__)


class ServiceError(Exception):
    """The service refused a request, failed it, or could not be reached.

    Attributes:
        status: the HTTP status (None when no answer came).
        code: the service's error code (``not_found``, ``invalid``, ``conflict``, ...),
            or ``unreachable`` / ``not_json`` when no usable answer came.
        detail: what went wrong and, where the service knows, what to do.
        errors: the invalid fields, each ``{"field": ..., "message": ...}``.
    """

    def __init__(
        self, status: int | None, code: str, detail: str, errors: list[dict[str, str]] | None = None
    ) -> None:
        self.status, self.code, self.detail = status, code, detail
        self.errors = list(errors or [])
        lines = [f"{status} {detail}".rstrip() if status is not None else detail]
        lines += [f"  {e.get('field', '')}: {e.get('message', '')}" for e in self.errors]
        super().__init__("\n".join(lines))


class Client:
    """The helios-hpo service at ``url``, called with ``token`` when one is given.

    Use it as a context manager, or ``close()`` it: it holds a connection pool.
    """

    def __init__(self, url: str = DEFAULT_URL, token: str | None = None, *, timeout_s: float = 30):
        self.url = url.rstrip("/")
        headers = {"authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout_s)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # Studies

    def create_study(self, spec: Mapping[str, Any]) -> Summary:
        """Submit a study spec (the dict a YAML or JSON spec file holds); the new study.

        The answer may take long: a warm start from a large study copies its trials
        first (about 2 s for 5,000), so this waits up to ``CREATE_TIMEOUT_S`` for it.
        """
        timeout = httpx.Timeout(self._http.timeout.connect, read=CREATE_TIMEOUT_S)
        created: Summary = self._call("POST", "/studies", json=dict(spec), timeout=timeout)
        return created

    def studies(self, *, page_size: int = 100) -> Iterator[Summary]:
        """Every study, one page after another."""
        return self._pages("/studies", {}, page_size)

    def study(self, name: str) -> Summary:
        """A study's spec, status, trial counts, best value and workers."""
        found: Summary = self._call("GET", _study(name))
        return found

    def trials(
        self, name: str, state: str | None = None, *, page_size: int = 100
    ) -> Iterator[Summary]:
        """Every trial of a study by number (only ``state``'s: COMPLETE, PRUNED, ...)."""
        params = {"state": state} if state is not None else {}
        return self._pages(f"{_study(name)}/trials", params, page_size)

    def best(self, name: str) -> Summary:
        """``{"directions": [...], "trials": [...]}``: the best trial, or the Pareto front."""
        best: Summary = self._call("GET", f"{_study(name)}/best")
        return best

    def pause(self, name: str) -> Summary:
        """Workers finish their current trial and exit; ``resume`` goes on."""
        return self._action(name, "pause")

    def resume(self, name: str) -> Summary:
        return self._action(name, "resume")

    def stop(self, name: str) -> Summary:
        """Stop now: in-flight trials end FAIL."""
        return self._action(name, "stop")

    def patch(self, name: str, **changes: Any) -> Summary:
        """Change a running study: ``n_trials``, ``timeout_s``, ``workers={"count": N}``, ..."""
        patched: Summary = self._call("PATCH", _study(name), json=changes)
        return patched

    def delete(self, name: str) -> None:
        """Delete a study that is not running, with its trials, logs and checkpoints."""
        self._call("DELETE", _study(name))

    def enqueue(self, name: str, params: Mapping[str, Any] | list[Mapping[str, Any]]) -> Summary:
        """Queue one parameter set (a dict) or several (a list) to run next."""
        trials = [dict(params)] if isinstance(params, Mapping) else [dict(p) for p in params]
        queued: Summary = self._call("POST", f"{_study(name)}/trials", json={"trials": trials})
        return queued

    def wait(
        self,
        name: str,
        *,
        progress: bool = False,
        timeout_s: float | None = None,
        interval_s: float = 1.0,
        away_s: float = AWAY_S,
    ) -> Summary:
        """Poll a study until it is no longer running; its last summary. ``progress``
        shows a bar of finished trials (with the best value and failures) on stderr.

        A service that is away (restarting, its database away: no answer, or 502-504)
        is asked again with back-off for up to ``away_s`` seconds in a row.

        Raises:
            TimeoutError: it still ran after ``timeout_s``.
            ServiceError: the service refused, or stayed away longer than ``away_s``.
        """
        read = _patient(lambda: self.study(name), away_s)
        if not progress:
            return follow_study(read, interval_s=interval_s, timeout_s=timeout_s)
        import tqdm

        from service.studies.lifecycle import finished_trials

        with tqdm.tqdm(desc=name, unit="trial") as bar:

            def show(study: Summary) -> None:
                bar.total = study["n_trials"]
                own = finished_trials(study["counts"]) - (study.get("warm_started") or 0)
                bar.update(own - bar.n)
                bar.set_postfix(best=study["best_value"], failed=study["counts"]["FAIL"])

            return follow_study(read, interval_s=interval_s, timeout_s=timeout_s, on_poll=show)

    # Models

    def artifacts(self, name: str, number: int) -> list[Summary]:
        """The files trial ``number`` stored (its model), each with whether it is kept."""
        found: list[Summary] = self._call("GET", f"{_study(name)}/trials/{int(number)}/artifacts")
        return found

    def download_model(
        self, name: str, path: str | os.PathLike[str], *, trial: int | None = None
    ) -> Download:
        """Save the best trial's model to ``path`` (with several objectives: ``trial``'s,
        of the Pareto front); ``Task.load_model(path)`` loads it back. The file appears
        whole or not at all, its SHA-256 checked against the service's.

        Raises:
            TargetError: ``path`` is no regular file nor a new name in an existing folder.
        """
        params = {"trial": trial} if trial is not None else {}
        return self._download(f"{_study(name)}/best/model", params, Path(path))

    def download_artifact(
        self, name: str, number: int, artifact_id: str, path: str | os.PathLike[str]
    ) -> Download:
        """Save one artifact of trial ``number`` to ``path`` (checked as ``download_model``)."""
        where = f"{_study(name)}/trials/{int(number)}/artifacts/{quote(artifact_id, safe='')}"
        return self._download(where, {}, Path(path))

    def _download(self, where: str, params: dict[str, Any], path: Path) -> Download:
        _check_target(path)
        partial = path.with_name(f".{path.name}.part")
        digest = hashlib.sha256()
        try:
            with self._http.stream("GET", where, params=params) as response:
                if not response.is_success:
                    response.read()
                    _raise_for(response)
                with partial.open("wb") as file:
                    for chunk in response.iter_bytes():
                        digest.update(chunk)
                        file.write(chunk)
                expected = _sha256_of(response.headers.get("repr-digest", ""))
                trial = int(response.headers.get("x-trial-number", "-1"))
                stored_by = response.headers.get("x-stored-by")
        except httpx.HTTPError as exc:
            partial.unlink(missing_ok=True)
            raise _unreachable(f"{self.url}{where}", exc) from None
        except OSError as exc:
            partial.unlink(missing_ok=True)
            raise TargetError(f"cannot write {path}: {exc.strerror or exc}") from None
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        if expected is not None and digest.hexdigest() != expected:
            partial.unlink(missing_ok=True)
            raise ServiceError(
                response.status_code,
                "checksum_mismatch",
                f"{self.url}{where}: the file's SHA-256 is not the service's; download it again",
            )
        os.replace(partial, path)
        return Download(path, trial, path.stat().st_size, digest.hexdigest(), stored_by)

    # Workers and tasks

    def workers(self, name: str) -> list[Summary]:
        """A study's workers: launcher, host, state, exit code, restarts."""
        found: list[Summary] = self._call("GET", f"{_study(name)}/workers")
        return found

    def logs(
        self, worker_id: int, *, tail: int = 100, trial: int | None = None, follow: bool = False
    ) -> Iterator[str]:
        """A worker's last ``tail`` log lines (of one ``trial`` when given); with
        ``follow``, then each new line as it is written, until the worker has ended."""
        params: dict[str, Any] = {"tail": tail}
        if trial is not None:
            params["trial"] = trial
        path = f"/workers/{int(worker_id)}/logs"
        if not follow:
            lines: list[str] = self._call("GET", path, params=params)["lines"]
            return iter(lines)
        return self._events(path, {**params, "follow": "true"})

    def tasks(self) -> list[Summary]:
        """The tasks workers can train, with their metrics and default search spaces."""
        found: list[Summary] = self._call("GET", "/tasks")
        return found

    # HTTP

    def _action(self, name: str, action: str) -> Summary:
        study: Summary = self._call("POST", f"{_study(name)}/{action}")
        return study

    def _pages(self, path: str, params: dict[str, Any], page_size: int) -> Iterator[Summary]:
        offset = 0
        while True:
            page = self._call("GET", path, params={**params, "limit": page_size, "offset": offset})
            yield from page["items"]
            offset += len(page["items"])
            if not page["items"] or offset >= page["total"]:
                return

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise _unreachable(f"{self.url}{path}", exc) from None
        _raise_for(response)
        if response.status_code == 204:
            return None
        try:
            return response.json()
        except ValueError:
            raise ServiceError(
                response.status_code,
                "not_json",
                f"{self.url}{path} answered without JSON; is {self.url} the helios-hpo service?",
            ) from None

    def _events(self, path: str, params: dict[str, Any]) -> Iterator[str]:
        """Server-sent events' data lines until the ``end`` event; a quiet worker may
        write nothing for minutes, so reads never time out."""
        timeout = httpx.Timeout(self._http.timeout.connect, read=None)
        try:
            with self._http.stream("GET", path, params=params, timeout=timeout) as response:
                if not response.is_success:
                    response.read()
                    _raise_for(response)
                for line in response.iter_lines():
                    if line == "event: end":
                        return
                    if line.startswith("data: "):
                        yield line.removeprefix("data: ")
        except httpx.HTTPError as exc:
            raise _unreachable(f"{self.url}{path}", exc) from None


@dataclasses.dataclass(frozen=True)
class Download:
    """A file saved from the service: where, of which trial, its size and SHA-256."""

    path: Path
    trial: int
    size_bytes: int
    sha256: str
    stored_by: str | None = None  # a warm-start copy's model: "STUDY/TRIAL" that stored it


class TargetError(ValueError):
    """A download's path is no place to write a file: its folder is missing, or it is
    something else than a regular file (a folder, a FIFO, a device, a link)."""


_KINDS = {
    stat.S_IFDIR: "a folder",
    stat.S_IFIFO: "a FIFO",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFSOCK: "a socket",
    stat.S_IFLNK: "a symbolic link",
}


def _check_target(path: Path) -> None:
    """Refuse ``path`` unless it is a regular file or a new name in an existing folder:
    a download replaces it, whatever it was."""
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        if not path.parent.is_dir():
            raise TargetError(f"cannot write {path}: no folder {path.parent}") from None
        return
    except OSError as exc:
        raise TargetError(f"cannot write {path}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(mode):
        kind = _KINDS.get(stat.S_IFMT(mode), "not a regular file")
        raise TargetError(
            f"cannot write {path}: it is {kind}; give a new file name or a regular file"
        )


def _away(exc: ServiceError) -> bool:
    """No answer, or a gateway's or the database's: the service may come back."""
    return (exc.status is None and exc.code == "unreachable") or exc.status in (502, 503, 504)


def _patient(read: Callable[[], Summary], away_s: float) -> Callable[[], Summary]:
    """``read``, asked again with back-off (0.5 s doubling to 5 s) while the service is
    away, for up to ``away_s`` seconds in a row; then its last error."""

    def patiently() -> Summary:
        deadline, delay = None, 0.5
        while True:
            try:
                return read()
            except ServiceError as exc:
                now = time.monotonic()
                deadline = now + away_s if deadline is None else deadline
                if not _away(exc) or now >= deadline:
                    raise
                log.warning("the service is away (%s); asking again in %.1f s", exc, delay)
                time.sleep(min(delay, max(deadline - now, 0)))
                delay = min(delay * 2, 5.0)

    return patiently


def _sha256_of(repr_digest: str) -> str | None:
    """The hex SHA-256 in a ``Repr-Digest`` header (RFC 9530), if it has one."""
    for item in repr_digest.split(","):
        algorithm, _, value = item.strip().partition("=")
        if algorithm == "sha-256" and value.startswith(":") and value.endswith(":"):
            return base64.b64decode(value[1:-1]).hex()
    return None


def _study(name: str) -> str:
    return f"/studies/{quote(name, safe='')}"


def _unreachable(url: str, exc: httpx.HTTPError) -> ServiceError:
    return ServiceError(
        None,
        "unreachable",
        f"cannot reach {url}: {exc or type(exc).__name__}; is `helios-hpo serve` running "
        "there? (--url or HELIOS_HPO_URL)",
    )


def _raise_for(response: httpx.Response) -> None:
    """A :class:`ServiceError` from an error response, whatever its body."""
    if response.is_success:
        return
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        body = {"code": "http_error", "detail": response.text[:200]}
    detail = str(body.get("detail", ""))
    errors = body.get("errors")
    raise ServiceError(
        response.status_code,
        str(body.get("code", "http_error")),
        detail,
        errors if isinstance(errors, list) else None,
    )


def follow_study(
    read: Callable[[], Summary],
    *,
    interval_s: float | Callable[[Summary], float] = 1.0,
    timeout_s: float | None = None,
    on_poll: Callable[[Summary], None] | None = None,
) -> Summary:
    """Read a study's summary (``GET /studies/{name}``) until its status is no longer
    ``running``; the last summary.

    Args:
        read: returns the summary.
        interval_s: seconds between reads, or a function of the last summary giving them.
        timeout_s: give up after this long (None: wait as long as it runs).
        on_poll: called with every summary read (a progress bar, say).

    Raises:
        TimeoutError: it still ran after ``timeout_s``; the message has its counts.
    """
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        study = read()
        if on_poll is not None:
            on_poll(study)
        if study["status"] != "running":
            return study
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError(
                f"study {study['name']} still runs after {timeout_s} s: {study['counts']}"
            )
        time.sleep(interval_s(study) if callable(interval_s) else interval_s)
