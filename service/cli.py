"""`helios-hpo serve | worker | dashboard | submit | studies | db upgrade`."""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from service.settings import Settings

__all__ = ["main"]

DEFAULT_URL = "http://127.0.0.1:8000"


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
    from service.db import redact_url
    from service.migrations import upgrade
    from service.settings import get_settings

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
        from service.dashboard import start_dashboard

        start_dashboard(settings.database_url, host, args.dashboard_port, tokens)
        print(f"helios-hpo: optuna-dashboard on http://{host}:{args.dashboard_port}")
    app = create_app(settings)
    # The ~120k objects of the imports live as long as the process: out of the
    # collector's sight, a full collection takes ~20 ms instead of ~100 ms (a
    # pause every request in flight would wait for).
    gc.collect()
    gc.freeze()
    uvicorn.run(app, host=host, port=port, log_level="info")
    return 0


def _dashboard(args: argparse.Namespace) -> int:
    from service.dashboard import start_dashboard
    from service.db import redact_url
    from service.settings import get_settings

    settings = get_settings()
    tokens = _tokens(settings)
    if tokens is None or _exposure_refused(args.host, tokens, args.insecure):
        return 2
    server = start_dashboard(settings.database_url, args.host, args.port, tokens)
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
    from service.worker import run_worker

    return run_worker(args.study, args.worker_id, get_settings())


def _db(args: argparse.Namespace) -> int:
    from service.db import redact_url
    from service.migrations import upgrade
    from service.settings import get_settings

    url = get_settings().database_url
    upgrade(url, args.revision)
    print(f"helios-hpo: {redact_url(url)} is at revision {args.revision}")
    return 0


def _request(method: str, url: str, body: Any = None) -> Any:
    import httpx

    try:
        response = httpx.request(method, url, json=body, timeout=30)
    except httpx.HTTPError as exc:
        raise SystemExit(
            f"helios-hpo: cannot reach {url}: {exc}; is `helios-hpo serve` running?"
        ) from None
    if response.status_code >= 400:
        try:
            error = response.json()
        except ValueError:
            error = {"detail": response.text}
        lines = [f"helios-hpo: {response.status_code} {error.get('detail', '')}"]
        lines += [f"  {e['field']}: {e['message']}" for e in error.get("errors", [])]
        raise SystemExit("\n".join(lines))
    return response.json()


def _load_spec(path: Path) -> Any:
    text = path.read_text()
    if path.suffix in (".yaml", ".yml"):
        import yaml

        return yaml.safe_load(text)
    return json.loads(text)


def _submit(args: argparse.Namespace) -> int:
    spec = _load_spec(args.spec)
    study = _request("POST", f"{args.url}/studies", spec)
    name = study["name"]
    workers = study["spec"]["workers"]["count"]
    print(f"created study {name!r}: {study['n_trials']} trials, {workers} workers")
    if not args.wait:
        return 0
    import tqdm

    with tqdm.tqdm(total=study["n_trials"], desc=name, unit="trial") as bar:
        while True:
            study = _request("GET", f"{args.url}/studies/{name}")
            done = study["counts"]["COMPLETE"] + study["counts"]["PRUNED"]
            bar.update(done - bar.n)
            bar.set_postfix(best=study["best_value"], failed=study["counts"]["FAIL"])
            if study["status"] != "running":
                break
            time.sleep(1.0)
    status, reason, best = study["status"], study["status_reason"], study["best_value"]
    print(f"study {name!r} {status}: {reason}; best value {best}")
    return 0 if study["status"] == "finished" else 1


def _studies(args: argparse.Namespace) -> int:
    if args.name:
        print(json.dumps(_request("GET", f"{args.url}/studies/{args.name}"), indent=2))
        return 0
    page = _request("GET", f"{args.url}/studies?limit=1000")
    for s in page["items"]:
        print(f"{s['name']:32} {s['task']:12} {s['status']:9} {s['n_trials']:>7} trials")
    return 0


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

    url = os.environ.get("HELIOS_HPO_URL", DEFAULT_URL)
    submit = sub.add_parser("submit", help="submit a study spec (JSON or YAML)")
    submit.add_argument("spec", type=Path)
    submit.add_argument("--wait", action="store_true", help="show progress until the study ends")
    submit.add_argument(
        "--url", default=url, help=f"the service (default $HELIOS_HPO_URL or {DEFAULT_URL})"
    )
    submit.set_defaults(func=_submit)

    studies = sub.add_parser("studies", help="list studies, or show one")
    studies.add_argument("name", nargs="?")
    studies.add_argument("--url", default=url)
    studies.set_defaults(func=_studies)

    db = sub.add_parser("db", help="database maintenance")
    db_sub = db.add_subparsers(dest="db_command", required=True)
    upgrade = db_sub.add_parser("upgrade", help="migrate the service's tables")
    upgrade.add_argument("revision", nargs="?", default="head")
    upgrade.set_defaults(func=_db)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``helios-hpo`` command."""
    args = _parser().parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
