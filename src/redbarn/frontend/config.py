"""`FrontendConfig`: every setting of one frontend process, with its default.

Filled by `redbarn frontend` flags and `REDBARN_*` variables (`frontend/cli.py`);
tests build it directly. The scheduling timings (worker timeout, sync intervals,
retention, action timeouts, queue caps) live in `scheduler`, the queue core's own
`SchedulerConfig`, which `scheduling_hook` receives.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from redbarn.config import ConfigError
from redbarn.queue.config import SchedulerConfig

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
DAY = 24 * 3600.0


@dataclass(frozen=True)
class FrontendConfig:
    # host:port to serve on; port 0 picks a free port (tests).
    listen: str = "127.0.0.1:8981"
    # Scheduler Redis (queue, leases). Also the CAS/AC unless cas_redis_url or storage say otherwise.
    redis_url: str = "redis://127.0.0.1:6379/0"
    # Redis for CAS and Action Cache; "" = redis_url.
    cas_redis_url: str = ""
    # "redis" (CAS/AC in Redis) or "grpc://host:port" (forward to another REAPI storage).
    storage: str = "redis"
    # Largest blob a ByteStream Write accepts (advertised as max_cas_blob_size_bytes).
    max_blob_size: int = 1 * GiB
    # Largest sum of blob sizes in one BatchUpdateBlobs/BatchReadBlobs (advertised).
    max_batch_total_size: int = 4 * MiB
    # gRPC message limit, above the batch limit to leave room for framing.
    max_message_size: int = 4 * MiB + 1 * MiB
    # CAS blob TTL, refreshed whenever a blob is found, read or written.
    cas_ttl: float = 7 * DAY
    # Action Cache entry TTL, refreshed on every hit.
    ac_ttl: float = 7 * DAY
    # How long a half-finished ByteStream upload stays resumable.
    upload_ttl: float = 3600.0
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
    # Scheduling timings and caps (Execution, OperationQueue, reaper).
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)

    def __post_init__(self) -> None:
        if self.storage != "redis" and not self.storage.startswith("grpc://"):
            raise ConfigError(
                f'invalid --storage "{self.storage}": use "redis" or grpc://host:port'
            )
        if self.storage.startswith("grpc://") and ":" not in self.storage_target:
            raise ConfigError(f'invalid --storage "{self.storage}": expected grpc://host:port')
        _, sep, port = self.listen.rpartition(":")
        if not sep or not port.isdigit():
            raise ConfigError(f'invalid --listen "{self.listen}": expected HOST:PORT')
        for flag, url in (("--redis", self.redis_url), ("--cas-redis", self.cas_redis_url)):
            if url and not url.startswith(("redis://", "rediss://", "unix://")):
                raise ConfigError(f'invalid {flag} "{url}": expected redis://host:port/db')
        if self.max_batch_total_size <= 0 or self.max_blob_size <= 0:
            raise ConfigError("--max-batch-size and --max-blob-size must be positive")
        if self.max_message_size < self.max_batch_total_size:
            raise ConfigError("the gRPC message size must be at least --max-batch-size")
        if self.chunk_size < 64 * KiB:
            raise ConfigError(f"chunk size {self.chunk_size} is below 64KiB")

    @property
    def storage_target(self) -> str:
        """host:port of the upstream storage, for storage = grpc://host:port."""
        return self.storage.removeprefix("grpc://")
