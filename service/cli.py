"""`helios-hpo serve | worker | dashboard | submit | studies | model | db upgrade`."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from service.settings import DEFAULT_URL

if TYPE_CHECKING:
    from service.client import Client
    from service.settings import Settings

__all__ = ["CliError", "main"]


def _loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _tokens(settings: Settings) -> dict[str, str] | None:
    """The configured API tokens, or None (and why) when they cannot be read."""
    try:
        return settings.tokens()
    except ValueError as exc:
        print(f"helios-hpo: {exc}", file=sys.stderr)
        return None


def _exposure_refused(host: str, tokens: dict[str, str], insecure: bool) -> bool:
    """True (and says why) when ``host`` is beyond loopback and nothing guards it."""
    if tokens or insecure or _loopback(host):
        return False
    print(
        f"helios-hpo: refusing to listen on {host} without API tokens: anyone who can reach "
        "it could start workers. Set HELIOS_HPO_API_TOKENS (e.g. write:$(openssl rand -hex "
        "24)) or HELIOS_HPO_API_TOKENS_FILE, or pass --insecure on a trusted network.",
        file=sys.stderr,
    )
    return True


def _data_dir_refused(data_dir: Path) -> bool:
    """True (and says why) when workers could not write their logs and checkpoints there."""
    import tempfile

    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=data_dir):
            pass
    except OSError as exc:
        print(
            f"helios-hpo: cannot write worker logs and checkpoints to {data_dir} ({exc}); "
            "set HELIOS_HPO_DATA_DIR to a writable folder",
            file=sys.stderr,
        )
        return True
    return False


def _serve(args: argparse.Namespace) -> int:
    import gc

    import uvicorn

    from service.api import create_app
    from service.api.security import ScrubFilter
    from service.settings import get_settings
    from service.storage.db import redact_url
    from service.storage.migrations import upgrade

    settings = get_settings()
    host = args.host or settings.host
    port = args.port or settings.port
    tokens = _tokens(settings)
    if tokens is None or _exposure_refused(host, tokens, args.insecure):
        return 2
    if _data_dir_refused(settings.data_dir):
        return 2
    upgrade(settings.database_url)
    print(f"helios-hpo: database {redact_url(settings.database_url)}, data in {settings.data_dir}")
    if args.dashboard_port is not None:
        from service.api.dashboard import start_dashboard
        from service.artifacts.store import ModelStore

        models = ModelStore.of(settings)
        start_dashboard(
            settings.database_url, host, args.dashboard_port, tokens, settings.data_dir, models
        )
        print(f"helios-hpo: optuna-dashboard on http://{host}:{args.dashboard_port}")
    app = create_app(settings)
    # The ~120k objects of the imports live as long as the process: out of the
    # collector's sight, a full collection takes ~20 ms instead of ~100 ms (a
    # pause every request in flight would wait for).
    gc.collect()
    gc.freeze()
    # Requests still open 10 s after SIGTERM are cut; log streams end at once.
    config = uvicorn.Config(
        app, host=host, port=port, log_level="info", timeout_graceful_shutdown=10
    )  # sets up logging
    logging.getLogger("uvicorn.access").addFilter(ScrubFilter())  # a token in a query string

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            app.state.stopping.set()
            super().handle_exit(sig, frame)

    Server(config).run()
    return 0


def _dashboard(args: argparse.Namespace) -> int:
    from service.api.dashboard import start_dashboard
    from service.artifacts.store import ModelStore
    from service.settings import get_settings
    from service.storage.db import redact_url

    settings = get_settings()
    tokens = _tokens(settings)
    if tokens is None or _exposure_refused(args.host, tokens, args.insecure):
        return 2
    models = ModelStore.of(settings)
    server = start_dashboard(
        settings.database_url, args.host, args.port, tokens, settings.data_dir, models
    )
    print(
        f"helios-hpo: optuna-dashboard on http://{args.host}:{server.server_port} "
        f"for {redact_url(settings.database_url)}; Ctrl-C stops it"
    )
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        server.shutdown()
    return 0


def _worker(args: argparse.Namespace) -> int:
    from service.settings import get_settings
    from service.worker.main import run_worker

    return run_worker(args.study, args.worker_id, get_settings())


def _db(args: argparse.Namespace) -> int:
    from service.settings import get_settings
    from service.storage.db import redact_url
    from service.storage.migrations import upgrade

    url = get_settings().database_url
    upgrade(url, args.revision)
    print(f"helios-hpo: {redact_url(url)} is at revision {args.revision}")
    return 0


class CliError(Exception):
    """A problem the user can fix, printed as ``helios-hpo: MESSAGE``; exit code 2."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


_AUTH_HINT = "pass --token, or set HELIOS_HPO_TOKEN (or HELIOS_HPO_TOKEN_FILE)"


@contextlib.contextmanager
def _service(args: argparse.Namespace) -> Iterator[Client]:
    """A client of the service ``--url`` names (with ``--token``); its errors as CliErrors."""
    from service.client import Client, ServiceError

    settings = _client_settings()
    try:
        token = args.token or settings.client_token()
    except ValueError as exc:
        raise CliError(str(exc)) from None
    try:
        with Client(args.url or settings.url, token) as client:
            yield client
    except ServiceError as exc:
        message = str(exc)
        if exc.status in (401, 403):
            first, _, rest = message.partition("\n")
            message = f"{first}; {_AUTH_HINT}" + (f"\n{rest}" if rest else "")
        raise CliError(message, code=1 if (exc.status or 0) >= 500 else 2) from None


def _client_settings() -> Settings:
    import pydantic

    from service.settings import get_settings

    try:
        return get_settings()
    except pydantic.ValidationError as exc:
        where = "; ".join(
            f"HELIOS_HPO_{'_'.join(map(str, e['loc'])).upper()}: {e['msg']}" for e in exc.errors()
        )
        raise CliError(f"invalid settings: {where}") from None


def _load_spec(path: Path) -> dict[str, Any]:
    """The spec in ``path`` (YAML for .yaml/.yml, else JSON)."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise CliError(f"cannot read {path}: no such file") from None
    except IsADirectoryError:
        raise CliError(f"cannot read {path}: it is a directory") from None
    except OSError as exc:
        raise CliError(f"cannot read {path}: {(exc.strerror or str(exc)).lower()}") from None
    except UnicodeDecodeError:
        raise CliError(f"cannot read {path}: it is not UTF-8 text") from None
    from service.spec.yaml_reader import BodyError, YamlSpecError, check_json, yaml_to_json

    if path.suffix in (".yaml", ".yml"):
        try:
            text = yaml_to_json(text)
        except YamlSpecError as exc:
            message = str(exc)
            raise CliError(f"{path}{'' if message.startswith('line ') else ':'} {exc}") from None
    try:
        check_json(text.encode())  # what the service refuses, said before sending
    except BodyError as exc:
        raise CliError(f"{path}: {exc}") from None
    try:
        spec = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CliError(f"{path} line {exc.lineno}, column {exc.colno}: {exc.msg}") from None
    except RecursionError:
        raise CliError(f"{path}: nested too deeply") from None
    if not isinstance(spec, dict):
        kind = "empty" if spec is None else f"a {type(spec).__name__}"
        raise CliError(f"{path}: a study spec is a mapping (name: ..., task: ...); it is {kind}")
    try:
        json.dumps(spec, allow_nan=False)
    except ValueError:
        raise CliError(f"{path}: NaN and infinity are not valid numbers in a spec") from None
    return spec


def _submit(args: argparse.Namespace) -> int:
    spec = _load_spec(args.spec)
    with _service(args) as client:
        study = client.create_study(spec)
        name = study["name"]
        workers = study["spec"]["workers"]["count"]
        print(f"created study {name!r}: {study['n_trials']} trials, {workers} workers")
        if not args.wait:
            return 0
        study = client.wait(name, progress=True)
    status, reason, best = study["status"], study["status_reason"], study["best_value"]
    print(f"study {name!r} {status}: {reason}; best value {best}")
    return 0 if study["status"] == "finished" else 1


def _studies(args: argparse.Namespace) -> int:
    with _service(args) as client:
        if args.name:
            print(json.dumps(client.study(args.name), indent=2))
            return 0
        for s in client.studies():
            print(f"{s['name']:32} {s['task']:12} {s['status']:9} {s['n_trials']:>7} trials")
    return 0


def _model(args: argparse.Namespace) -> int:
    from service.client import TargetError

    output = args.output or Path(f"{args.name}.pt")
    with _service(args) as client:
        try:
            saved = client.download_model(args.name, output, trial=args.trial)
        except TargetError as exc:
            raise CliError(str(exc)) from None
        task = client.study(args.name)["task"]
    copy = ""
    if saved.stored_by:
        study, _, trial = saved.stored_by.rpartition("/")
        copy = f" (a warm-start copy: trial {trial} of study {study!r} stored it)"
    print(
        f"saved the model of trial {saved.trial} of study {args.name!r}{copy} to {saved.path} "
        f"({saved.size_bytes} bytes, sha256 {saved.sha256[:12]}); load it in Python with "
        f"service.tasks.get_task({task!r}).load_model({str(saved.path)!r})"
    )
    return 0


def _client_options() -> argparse.ArgumentParser:
    options = argparse.ArgumentParser(add_help=False)
    options.add_argument("--url", help=f"the service (default $HELIOS_HPO_URL or {DEFAULT_URL})")
    options.add_argument(
        "--token",
        help="the API token to send (default $HELIOS_HPO_TOKEN, or the file "
        "$HELIOS_HPO_TOKEN_FILE names; a file keeps it out of shell history)",
    )
    return options


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="helios-hpo", description="Hyperparameter search as a service."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the API and the worker supervisor")
    serve.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default 8000)")
    serve.add_argument(
        "--dashboard-port",
        type=int,
        help="also serve optuna-dashboard on this port (on --host)",
    )
    serve.add_argument(
        "--insecure",
        action="store_true",
        help="listen beyond loopback without API tokens (trusted networks only)",
    )
    serve.set_defaults(func=_serve)

    dashboard = sub.add_parser("dashboard", help="serve optuna-dashboard on the database")
    dashboard.add_argument("--host", default="127.0.0.1")
    dashboard.add_argument("--port", type=int, default=8080)
    dashboard.add_argument(
        "--insecure", action="store_true", help="listen beyond loopback without API tokens"
    )
    dashboard.set_defaults(func=_dashboard)

    worker = sub.add_parser("worker", help="run trials of a study until its budget is spent")
    worker.add_argument("--study", required=True)
    worker.add_argument("--worker-id", type=int, default=0)
    worker.set_defaults(func=_worker)

    client = _client_options()
    submit = sub.add_parser("submit", help="submit a study spec (JSON or YAML)", parents=[client])
    submit.add_argument("spec", type=Path)
    submit.add_argument("--wait", action="store_true", help="show progress until the study ends")
    submit.set_defaults(func=_submit)

    studies = sub.add_parser("studies", help="list studies, or show one", parents=[client])
    studies.add_argument("name", nargs="?")
    studies.set_defaults(func=_studies)

    model = sub.add_parser(
        "model", help="download a study's best model (a checkpoint file)", parents=[client]
    )
    model.add_argument("name")
    model.add_argument("--trial", type=int, help="with several objectives: a Pareto-front trial")
    model.add_argument("-o", "--output", type=Path, help="the file to write (default NAME.pt)")
    model.set_defaults(func=_model)

    db = sub.add_parser("db", help="database maintenance")
    db_sub = db.add_subparsers(dest="db_command", required=True)
    upgrade = db_sub.add_parser("upgrade", help="migrate the service's tables")
    upgrade.add_argument("revision", nargs="?", default="head")
    upgrade.set_defaults(func=_db)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``helios-hpo`` command."""
    args = _parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except CliError as exc:
        print(f"helios-hpo: {exc}", file=sys.stderr)
        return exc.code
    except ValidationError as exc:  # the settings, read from the environment
        from service import settings

        model = getattr(settings, exc.title, None)  # Settings, or a group of it
        prefix = model.model_config.get("env_prefix", "") if model is not None else ""
        for error in exc.errors():
            name = "_".join(str(part) for part in error["loc"]).upper()
            where = f"{prefix}{name}: " if name else ""
            message = error["msg"].removeprefix("Value error, ")
            print(f"helios-hpo: invalid setting: {where}{message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
