"""`FrontendConfig`: every setting of one frontend process, with its default.

Filled by `redbarn frontend` flags and `REDBARN_*` variables (`frontend/cli.py`);
tests build it directly. The scheduling timings (worker timeout, sync intervals,
retention, action timeouts, queue caps) live in `scheduler`, the queue core's own
`SchedulerConfig`, which `scheduling_hook` receives.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import urlsplit

from redbarn.config import DAY, DEFAULT_PORT, HOUR, ConfigError, GiB, KiB, MiB
from redbarn.queue.config import SchedulerConfig
from redbarn.router import ActionRouter
from redbarn.runtime.redisurl import parse_redis_url


def redact_url(url: str) -> str:
    """`url` with its password (and an ACL user's password) replaced by `***`, for logs.

    `rediss://app:s3cret@r:6380/0` -> `rediss://app:***@r:6380/0`; a `password=` query
    parameter is masked too. Anything unparseable is masked whole.
    """
    if "://" not in url:  # not a URL at all (an error message quotes it)
        return "***@" + url.rpartition("@")[2] if "@" in url else url
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
        userinfo, at, host = netloc.rpartition("@")
        user, colon, _password = userinfo.partition(":")
        if colon:  # redis://user:password@host or redis://:password@host
            netloc = f"{user}:***{at}{host}"
        query = "&".join(
            f"{k}=***" if k.lower() == "password" else f"{k}{eq}{v}"
            for k, eq, v in (item.partition("=") for item in parts.query.split("&") if item)
        )
        tail = (f"?{query}" if query else "") + (f"#{parts.fragment}" if parts.fragment else "")
        return f"{parts.scheme}://{netloc}{parts.path}{tail}"
    except ValueError:
        return "***"


# What a gRPC message may hold beyond the blobs of a batch: framing and digests.
MESSAGE_HEADROOM = 1 * MiB


@dataclass(frozen=True)
class FrontendConfig:
    # host:port to serve on; port 0 picks a free port (tests).
    listen: str = f"127.0.0.1:{DEFAULT_PORT}"
    # HTTP listener for /metrics (Prometheus) and the web page of the queue, HOST:PORT;
    # "" = none. Port 0 picks a free port (tests).
    metrics_listen: str = ""
    # Second listener for workers (OperationQueue plus CAS, ByteStream, AC, Capabilities,
    # health); "" = none. When set, `listen` no longer serves Synchronize.
    worker_listen: str = ""
    # Scheduler Redis (queue, leases). Also the CAS/AC unless cas_redis_url or storage say otherwise.
    # URLs may carry ACL users and passwords, so they stay out of repr(); log redact_url(url).
    redis_url: str = field(default="redis://127.0.0.1:6379/0", repr=False)
    # Redis for CAS and Action Cache; "" = redis_url.
    cas_redis_url: str = field(default="", repr=False)
    # "redis" (CAS/AC in Redis), or "grpc://host:port" / "grpcs://host:port" (TLS):
    # forward to another REAPI storage.
    storage: str = "redis"
    # grpcs:// upstream: PEM CA bundle to verify it ("" = the system roots), a file holding
    # the bearer token sent to it, and a client certificate and key for mTLS.
    storage_tls_ca: str = ""
    storage_token_file: str = ""
    storage_tls_cert: str = ""
    storage_tls_key: str = ""
    # Largest blob any CAS or ByteStream call may name (advertised as max_cas_blob_size_bytes);
    # a digest declaring more is INVALID_ARGUMENT before any work.
    max_blob_size: int = 1 * GiB
    # Largest Action or Command Execute reads (Buildbarn's 16 MiB message limit).
    max_action_size: int = 16 * MiB
    # Most digests in one FindMissingBlobs, BatchReadBlobs or BatchUpdateBlobs. Bazel sends
    # at most ~60,000 (its 4 MiB message divided by the size of a digest).
    max_batch_digests: int = 65536
    # Largest sum of blob sizes in one BatchUpdateBlobs/BatchReadBlobs (advertised).
    max_batch_total_size: int = 4 * MiB
    # gRPC message limit: the batch limit plus room for framing (the CLI keeps it so).
    max_message_size: int = max_batch_total_size + MESSAGE_HEADROOM
    # gRPC server limits (both listeners). Concurrent streams per HTTP/2 connection;
    # keepalive: clients may ping no more often than keepalive_min_time (else GOAWAY
    # too_many_pings), the server pings an idle connection every keepalive_time and drops
    # it when no answer comes within keepalive_timeout; a connection without calls for
    # max_connection_idle is closed; max_connection_age (0 = unlimited) closes any
    # connection that old, after max_connection_age_grace for calls in flight.
    grpc_max_concurrent_streams: int = 1000
    grpc_keepalive_min_time: float = 10.0
    grpc_keepalive_time: float = 300.0
    grpc_keepalive_timeout: float = 20.0
    grpc_max_connection_idle: float = 1 * HOUR
    grpc_max_connection_age: float = 0.0
    grpc_max_connection_age_grace: float = 60.0
    # CAS blob TTL, refreshed whenever a blob is found, read or written.
    cas_ttl: float = 7 * DAY
    # Action Cache entry TTL, refreshed on every hit.
    ac_ttl: float = 7 * DAY
    # How long a half-finished ByteStream upload stays resumable.
    upload_ttl: float = 1 * HOUR
    # Size of one CAS chunk key; bigger blobs span several keys.
    chunk_size: int = 1 * MiB
    # Most bytes GetActionResult inlines for inline_stdout/inline_stderr/inline_output_files.
    max_inline_size: int = 1 * MiB
    # Largest total size of output Trees the completeness check reads before giving up.
    max_tree_check_size: int = 64 * MiB
    # Health probe period (Redis PING / upstream GetCapabilities).
    health_interval: float = 1.0
    # SIGTERM: seconds in-flight calls get to finish before they are cancelled.
    grace_period: float = 10.0
    # Bearer-token files, one token per line ("" = none; no file at all = no authentication).
    client_tokens: str = ""
    worker_tokens: str = ""
    admin_tokens: str = ""
    # May clients UpdateActionResult? (Bazel uploads local results.) Workers always may.
    allow_client_ac_writes: bool = True
    # PEM certificate chain and key: TLS on both listeners ("" = plaintext).
    tls_cert: str = ""
    tls_key: str = ""
    # PEM CA bundle: the worker listener requires client certificates it signed (mTLS).
    tls_client_ca: str = ""
    # bb_scheduler's action router (--action-router): platform key extractor here; its
    # invocation levels and timeouts are copied into `scheduler`.
    router: ActionRouter = field(default_factory=ActionRouter)
    # Platform properties left out of the platform queue key but still given to the
    # worker (--ignore-platform-property; NativeLink's "ignore" property type): one
    # worker pool serves every value, e.g. every container-image.
    ignored_platform_properties: tuple[str, ...] = ()
    # Scheduling timings and caps (Execution, OperationQueue, reaper).
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)

    def __post_init__(self) -> None:
        if self.storage != "redis" and not self.storage.startswith(("grpc://", "grpcs://")):
            raise ConfigError(
                f'invalid --storage "{self.storage}": use "redis", grpc://host:port or '
                "grpcs://host:port"
            )
        if self.storage != "redis" and ":" not in self.storage_target:
            raise ConfigError(f'invalid --storage "{self.storage}": expected grpc://host:port')
        storage_tls = (self.storage_tls_ca, self.storage_tls_cert, self.storage_tls_key)
        if any(storage_tls) and not self.storage.startswith("grpcs://"):
            raise ConfigError("--storage-tls-* flags need --storage grpcs://host:port")
        if bool(self.storage_tls_cert) != bool(self.storage_tls_key):
            raise ConfigError("--storage-tls-cert and --storage-tls-key must be given together")
        if self.storage_token_file and self.storage == "redis":
            raise ConfigError("--storage-token-file needs --storage grpc:// or grpcs://")
        for flag, address in (
            ("--listen", self.listen),
            ("--worker-listen", self.worker_listen),
            ("--metrics-listen", self.metrics_listen),
        ):
            _, sep, port = address.rpartition(":")
            if (address or flag == "--listen") and (not sep or not port.isdigit()):
                raise ConfigError(f'invalid {flag} "{address}": expected HOST:PORT')
        for flag, url in (("--redis", self.redis_url), ("--cas-redis", self.cas_redis_url)):
            if url:  # one server, redis+cluster:// or redis+sentinel://
                parse_redis_url(url, flag)
        self._check_security()
        if min(self.max_batch_total_size, self.max_blob_size, self.max_action_size) <= 0:
            raise ConfigError(
                "--max-batch-size, --max-blob-size and --max-action-size must be positive"
            )
        if self.max_batch_digests < 1:
            raise ConfigError("--max-batch-digests must be at least 1")
        if self.max_message_size < self.max_batch_total_size:
            raise ConfigError("the gRPC message size must be at least --max-batch-size")
        if self.chunk_size < 64 * KiB:
            raise ConfigError(f"chunk size {self.chunk_size} is below 64KiB")

    def _check_security(self) -> None:
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ConfigError("--tls-cert and --tls-key must be given together")
        if self.tls_client_ca and not (self.tls_cert and self.worker_listen):
            raise ConfigError("--tls-client-ca needs --tls-cert, --tls-key and --worker-listen")
        if not self.allow_client_ac_writes and not (self.worker_listen or self.worker_tokens):
            # Without either, workers are indistinguishable from clients and could not
            # write their results either.
            raise ConfigError(
                "--allow-client-ac-writes=false needs --worker-listen or --worker-tokens"
            )

    @property
    def authenticated(self) -> bool:
        return bool(self.client_tokens or self.worker_tokens or self.admin_tokens)

    @property
    def storage_target(self) -> str:
        """host:port of the upstream storage, for storage = grpc[s]://host:port."""
        return self.storage.removeprefix("grpcs://").removeprefix("grpc://")

    @property
    def proxied(self) -> bool:
        """CAS and AC forward to another REAPI server (--storage grpc[s]://)."""
        return self.storage != "redis"
