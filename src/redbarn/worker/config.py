"""WorkerConfig: everything `redbarn worker` can be told, with its defaults."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from redbarn.config import DEFAULT_PORT, MINUTE, GiB, MiB


def _default_base() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "redbarn", "worker")


@dataclass(frozen=True)
class WorkerConfig:
    # gRPC target of the scheduler (OperationQueue), e.g. lb:8981 or dns:///frontends:8981.
    frontend: str = f"127.0.0.1:{DEFAULT_PORT}"
    # gRPC target for CAS, ActionCache and ByteStream; None means the frontend.
    cas: str | None = None
    # Number of worker threads, each its own worker identity.
    concurrency: int = field(default_factory=lambda: os.cpu_count() or 1)
    # Platform properties announced to the scheduler (sent sorted).
    platform: tuple[tuple[str, str], ...] = ()
    # Extra worker_id labels (override "hostname"/"thread" on a clash).
    labels: tuple[tuple[str, str], ...] = ()
    # The platform queue this worker serves: instance name prefix and size class.
    instance_name_prefix: str = ""
    size_class: int = 0
    # Per-action build directories live here; must share a file system with cache_dir.
    build_dir: str = field(default_factory=lambda: os.path.join(_default_base(), "build"))
    # Content-addressed input cache; survives restarts.
    cache_dir: str = field(default_factory=lambda: os.path.join(_default_base(), "cas"))
    # Largest total size of cache_dir (LRU eviction).
    cache_size: int = 10 * GiB
    # Environment variables every action gets, below the Command's own.
    environment: tuple[tuple[str, str], ...] = ()
    # Hostname label of worker_id; None means socket.gethostname().
    hostname: str | None = None
    # Bearer token sent on every call (the frontend's worker role); None sends none.
    token: str | None = field(default=None, repr=False)
    # The file the token was read from ("" = none): --run-as checks the action user
    # cannot read it.
    token_file: str = ""
    # PEM CA bundle that signed the frontend's certificate: TLS to frontend and CAS
    # ("" = plaintext). tls_cert/tls_key: this worker's client certificate (mTLS).
    tls_ca: str = ""
    tls_cert: str = ""
    tls_key: str = ""
    # Bounds on an action's input root, checked while walking it, before anything is
    # materialised (a Bazel action with 100k inputs is far inside them), and the
    # deadline of fetching and materialising the inputs.
    max_input_files: int = 1_000_000
    max_input_directories: int = 200_000
    max_input_depth: int = 256
    max_input_bytes: int = 32 * GiB
    input_fetch_timeout: float = 15 * MINUTE
    # Bounds on what an action leaves behind: output files (and symlinks), their total
    # size, and each of stdout and stderr.
    max_output_files: int = 100_000
    max_output_bytes: int = 16 * GiB
    max_stdio_bytes: int = 64 * MiB
    # Run actions as this USER[:GROUP] ("" = the worker's own user). Must be a user
    # dedicated to actions: every process it owns is killed after each action.
    run_as: str = ""
    # "podman" or "docker" (a name or a path): run actions whose platform has
    # container-image inside that image ("" = refuse such actions).
    container_runtime: str = ""
    # Deadline of one Synchronize call (it may long-poll).
    sync_timeout: float = 300.0
    # Log the action counters this often (0: only at exit).
    metrics_interval: float = 60.0
    # HTTP HOST:PORT serving Prometheus /metrics ("" = none).
    metrics_listen: str = ""
    # Longest backoff between failed Synchronize calls.
    backoff_max: float = 5.0
