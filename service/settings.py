"""Service settings: the only place that reads the environment (HELIOS_HPO_*)."""

from __future__ import annotations

import sys
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from service import __version__

__all__ = [
    "DEFAULT_URL",
    "WORKER_COMMAND",
    "DockerHost",
    "DockerSettings",
    "Settings",
    "get_settings",
]

DEFAULT_URL = "http://127.0.0.1:8000"


# What runs `helios-hpo worker` (then --study S --worker-id N): this interpreter, the
# package by module, and -P so that no folder a worker starts in (one holding a
# service.py or service/ of its own) shadows the package.
WORKER_COMMAND = (sys.executable, "-P", "-m", "service.cli", "worker")


class DockerHost(BaseModel):
    """A Docker engine that runs workers, and the GPUs it offers."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=64)
    url: str = Field(description="unix:///var/run/docker.sock, tcp://host:2376 or ssh://user@host")
    gpus: list[int] = Field(default_factory=list)
    tls: bool = Field(False, description="verify tcp:// with the certificates in cert_path")
    cert_path: Path | None = Field(None, description="ca.pem, cert.pem and key.pem for TLS")

    @field_validator("url")
    @classmethod
    def _known_scheme(cls, value: str) -> str:
        if not value.startswith(("unix://", "tcp://", "ssh://")):
            raise ValueError(f"a Docker URL starts with unix://, tcp:// or ssh://, got {value!r}")
        return value


class DockerSettings(BaseSettings):
    """Workers as containers on Docker hosts; each field is read from
    ``HELIOS_HPO_DOCKER_<FIELD>``, e.g. ``HELIOS_HPO_DOCKER_HOSTS``."""

    model_config = SettingsConfigDict(env_prefix="HELIOS_HPO_DOCKER_", extra="ignore")

    hosts: list[DockerHost] = Field(
        default_factory=list,
        description='JSON, e.g. [{"name": "gpu1", "url": "ssh://me@gpu1", "gpus": [0, 1]}]',
    )
    image: str = Field(
        f"helios-hpo-worker:{__version__}",
        description="The default worker image (this service's version); specs may name "
        "another of `images` in `workers.image`.",
    )
    images: list[str] = Field(
        default_factory=list, description="Other images a spec may name in workers.image."
    )
    network: str | None = Field(None, description="The worker containers' network.")
    volumes: list[str] = Field(
        default_factory=lambda: ["helios-hpo_data:/data"],
        description="Volumes of every worker container, as name:/path.",
    )
    env: dict[str, str] = Field(
        default_factory=dict, description="More environment for worker containers."
    )
    database_url: str | None = Field(
        None, description="The database URL as containers reach it (default: database_url)."
    )
    user: str | None = Field(
        None,
        description=(
            "uid:gid of the worker containers (default: the image's); the service's own "
            "when they share its SQLite file or data folder by bind mount."
        ),
    )
    gpu_devices: Literal["request", "env"] = Field(
        "request",
        description=(
            "request: the leased GPUs as device requests (the NVIDIA container toolkit); "
            "env: only NVIDIA_VISIBLE_DEVICES, for hosts whose default runtime is nvidia."
        ),
    )


# sbatch options the Slurm launcher sets itself: extra_args may not give them.
SLURM_OWN_OPTIONS = frozenset(
    {
        "--job-name", "--comment", "--output", "--error", "--open-mode", "--export",
        "--gres", "--gpus", "--gpus-per-task", "--gpus-per-node", "--partition",
        "--account", "--qos", "--time", "--requeue", "--no-requeue", "--parsable", "--wrap",
        "--chdir", "--nodes", "--ntasks",
    }
)  # fmt: skip


class SlurmSettings(BaseSettings):
    """Workers as Slurm batch jobs; each field is read from ``HELIOS_HPO_SLURM_<FIELD>``,
    e.g. ``HELIOS_HPO_SLURM_ENABLED``. Only the operator sets these, never a spec."""

    model_config = SettingsConfigDict(env_prefix="HELIOS_HPO_SLURM_", extra="ignore")

    enabled: bool = Field(False, description='Run workers as Slurm jobs ("launcher": "slurm").')
    partition: str | None = Field(None, description="sbatch --partition.")
    account: str | None = Field(None, description="sbatch --account.")
    qos: str | None = Field(None, description="sbatch --qos.")
    time_limit: str | None = Field(None, description="sbatch --time, e.g. 1-00:00:00")
    extra_args: list[str] = Field(
        default_factory=list,
        description='More sbatch options, JSON, e.g. ["--constraint=a100", "--mem=32G"].',
    )
    worker_command: list[str] = Field(
        default_factory=lambda: list(WORKER_COMMAND),
        description="What runs `helios-hpo worker` on the nodes, JSON (default: this "
        "service's interpreter, which the nodes must have at the same path).",
    )
    max_gpus_per_worker: int = Field(8, ge=0, description="The most GPUs a spec may ask.")
    database_url: str | None = Field(
        None, description="The database URL as the nodes reach it (default: database_url)."
    )
    env: dict[str, str] = Field(default_factory=dict, description="More environment for jobs.")

    @field_validator("extra_args")
    @classmethod
    def _own_options_refused(cls, args: list[str]) -> list[str]:
        for arg in args:
            option = arg.split("=", 1)[0]
            if not option.startswith("--"):
                raise ValueError(f"{arg!r}: give long options, --name=value")
            if option in SLURM_OWN_OPTIONS:
                raise ValueError(f"{arg!r}: the launcher sets {option} itself")
        return args


class Settings(BaseSettings):
    """Configuration of the service and its workers.

    Every field is read from ``HELIOS_HPO_<FIELD>``, e.g. ``HELIOS_HPO_DATABASE_URL``.
    """

    model_config = SettingsConfigDict(env_prefix="HELIOS_HPO_", extra="ignore")

    database_url: str = Field(
        "sqlite:///helios-hpo.db",
        description="SQLAlchemy URL holding the service's and Optuna's tables.",
    )
    data_dir: Path = Field(Path("helios-hpo-data"), description="Worker logs and checkpoints.")
    gpus: Annotated[list[int], NoDecode] = Field(
        default_factory=list, description="GPU ids local workers may use, e.g. '0,1'."
    )
    host: str = Field("127.0.0.1", description="Where `serve` listens (`--host` overrides).")
    port: int = Field(8000, description="The port `serve` listens on (`--port` overrides).")
    # The command line's view of the service (submit, studies).
    url: str = Field(DEFAULT_URL, description="The service the command line talks to.")
    token: SecretStr | None = Field(None, description="The token the command line sends.")
    token_file: Path | None = Field(
        None, description="A file holding the command line's token (kept out of shell history)."
    )
    supervisor_interval_s: float = Field(
        1.0, gt=0, description="How often the supervisor reconciles studies and workers."
    )
    heartbeat_interval_s: int = Field(
        10, ge=1, description="How often a running trial's worker records its heartbeat."
    )
    heartbeat_grace_s: int = Field(
        60, ge=2, description="A trial silent this long is failed, and its retry queued."
    )
    worker_stop_timeout_s: float = Field(
        10.0, gt=0, description="A stopped study's workers get SIGTERM, SIGKILL after this."
    )
    launcher_outage_s: float = Field(
        300.0,
        gt=0,
        description=(
            "How long a launcher's host may stay unreachable (e.g. a Docker engine "
            "restarting) before studies that cannot start workers on it fail."
        ),
    )
    db_retry_s: float = Field(
        120.0, gt=0, description="How long workers retry while the database is away."
    )
    ddp_timeout_s: float = Field(
        300.0,
        gt=0,
        description="The longest a rank of a several-rank trial waits on the others (a "
        "collective) before it gives up; it must outlast db_retry_s, which rank 0 may spend "
        "between trials while the others wait.",
    )
    artifact_store: str | None = Field(
        None,
        pattern=r"^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$",
        description="s3://BUCKET: stored models go to this S3 bucket (extra s3; credentials "
        "and region from the usual AWS_* variables) instead of the data directory.",
    )
    artifact_s3_endpoint_url: str | None = Field(
        None, description="The S3 endpoint of an S3-compatible store (MinIO, Ceph RGW, ...)."
    )
    checkpoint_budget_bytes: int | None = Field(
        None,
        ge=1,
        description="The most bytes the checkpoints and stored models of all studies may "
        "take: over it, the supervisor removes stored models, the worst ranked first, never "
        "a study's best one nor a running or failed trial's checkpoints (unset: no limit).",
    )
    keep_finished_checkpoints: bool = Field(
        False,
        description="Keep the working checkpoints of trials that finished COMPLETE or PRUNED "
        "(to inspect a run); by default they are deleted once the trial ends.",
    )
    # The Docker launcher (workers.launcher = "docker"): HELIOS_HPO_DOCKER_*.
    docker: DockerSettings = Field(default_factory=lambda: DockerSettings())
    # The Slurm launcher (workers.launcher = "slurm"): HELIOS_HPO_SLURM_*.
    slurm: SlurmSettings = Field(default_factory=lambda: SlurmSettings())
    workers_per_gpu: int = Field(
        1, ge=1, le=64, description="How many workers (local or Docker) may share one GPU."
    )
    # Who may call the API and the dashboard.
    api_tokens: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated ROLE:TOKEN entries, ROLE read or write.",
    )
    api_tokens_file: Path | None = Field(
        None, description="A file of ROLE:TOKEN lines, read at start."
    )
    max_body_bytes: int = Field(1 << 20, ge=1024, description="Larger request bodies get 413.")
    worker_nice: int = Field(
        10,
        ge=0,
        le=19,
        description="Workers lower their CPU priority by this much: on a shared host the API, "
        "the supervisor and heartbeats stay responsive while workers keep the CPU busy.",
    )
    api_threads: int = Field(
        4,
        ge=1,
        le=256,
        description="Requests whose database work runs at once; more wait their turn. Few "
        "threads keep the event loop responsive: many starve it of the GIL under load.",
    )

    @field_validator("api_tokens", mode="before")
    @classmethod
    def _split_tokens(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    def tokens(self) -> dict[str, str]:
        """Every configured token and its role (read or write).

        Raises:
            ValueError: an entry is not ROLE:TOKEN; the message never shows the token.
        """
        entries = list(self.api_tokens)
        if self.api_tokens_file is not None:
            try:
                lines = self.api_tokens_file.read_text().splitlines()
            except OSError as exc:
                raise ValueError(
                    f"cannot read HELIOS_HPO_API_TOKENS_FILE {self.api_tokens_file}: {exc.strerror}"
                ) from None
            entries += [line.strip() for line in lines if line.strip() and not line.startswith("#")]
        tokens = {}
        for number, entry in enumerate(entries, 1):
            role, _, token = entry.partition(":")
            if role not in ("read", "write") or len(token) < 16:
                raise ValueError(
                    f"API token entry {number} must be 'read:TOKEN' or 'write:TOKEN' with a "
                    "token of at least 16 characters (HELIOS_HPO_API_TOKENS / _FILE)"
                )
            tokens[token] = role
        return tokens

    def client_token(self) -> str | None:
        """The token the command line sends: HELIOS_HPO_TOKEN, else HELIOS_HPO_TOKEN_FILE.

        Raises:
            ValueError: the token file cannot be read or is empty.
        """
        if self.token is not None and self.token.get_secret_value():
            return self.token.get_secret_value().strip()
        if self.token_file is None:
            return None
        try:
            token = self.token_file.read_text().strip()
        except (OSError, UnicodeDecodeError) as exc:
            why = exc.strerror if isinstance(exc, OSError) else "not text"
            raise ValueError(
                f"cannot read HELIOS_HPO_TOKEN_FILE {self.token_file}: {why}"
            ) from None
        if not token:
            raise ValueError(f"HELIOS_HPO_TOKEN_FILE {self.token_file} is empty")
        return token

    @field_validator("gpus", mode="before")
    @classmethod
    def _split_gpus(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [int(part) for part in value.split(",") if part.strip()]
        return value

    @model_validator(mode="after")
    def _ddp_timeout_outlasts_db_retries(self) -> Settings:
        if self.ddp_timeout_s <= self.db_retry_s:
            raise ValueError(
                f"HELIOS_HPO_DDP_TIMEOUT_S ({self.ddp_timeout_s}) must exceed "
                f"HELIOS_HPO_DB_RETRY_S ({self.db_retry_s}): the ranks of a trial wait for "
                "rank 0 while it retries the database"
            )
        return self

    @model_validator(mode="after")
    def _grace_exceeds_interval(self) -> Settings:
        if self.heartbeat_grace_s <= self.heartbeat_interval_s:
            raise ValueError(
                f"HELIOS_HPO_HEARTBEAT_GRACE_S ({self.heartbeat_grace_s}) must exceed "
                f"HELIOS_HPO_HEARTBEAT_INTERVAL_S ({self.heartbeat_interval_s}): a live "
                "trial's first heartbeat comes one interval after it starts"
            )
        return self


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The settings of this process, read once from the environment."""
    return Settings()
