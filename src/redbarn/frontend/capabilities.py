"""Capabilities: what this frontend really implements, nothing more.

- SHA256 only (cache and execution), zstd for ByteStream and the batch methods
  (`supported_compressors`, `supported_batch_update_compressors`; REAPI 2.2), batch
  limit and largest blob as configured, absolute symlinks disallowed by default (the worker rejects
  symlinks escaping the input root);
- `exec_enabled` is a constructor argument: true only when the Execution servicer
  is wired in;
- API versions: deprecated 2.0, low 2.0, high 2.3. Buildbarn's scheduler reports
  deprecated 2.2 / low 2.3 / high 2.12 (reference §2.16 R74), but a REAPI 2.0
  client such as Bazel 4.x (the e2e workspace) rejects a server whose low version
  is above its own ("client version 2.0 is not supported"), and redbarn does serve
  2.0 semantics (output_files/output_directories). High is 2.3: everything we
  implement is in 2.3; later optional features (split/splice) are not offered, and
  their capability fields say so.
"""

from __future__ import annotations

from typing import Any

from redbarn.digests import SHA256, validate_instance_name
from redbarn.frontend.errors import grpc_errors
from redbarn.proto import remote_execution_pb2 as re_pb2
from redbarn.proto import remote_execution_pb2_grpc as re_grpc
from redbarn.proto import semver_pb2

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
DEPRECATED_API_VERSION = semver_pb2.SemVer(major=2, minor=0)
LOW_API_VERSION = semver_pb2.SemVer(major=2, minor=0)
HIGH_API_VERSION = semver_pb2.SemVer(major=2, minor=3)


def server_capabilities(
    *,
    max_batch_total_size: int,
    max_blob_size: int,
    exec_enabled: bool,
    symlink_strategy: re_pb2.SymlinkAbsolutePathStrategy.Value = re_pb2.SymlinkAbsolutePathStrategy.DISALLOWED,
) -> re_pb2.ServerCapabilities:
    return re_pb2.ServerCapabilities(
        cache_capabilities=re_pb2.CacheCapabilities(
            digest_functions=[SHA256],
            action_cache_update_capabilities=re_pb2.ActionCacheUpdateCapabilities(
                update_enabled=True
            ),
            max_batch_total_size_bytes=max_batch_total_size,
            symlink_absolute_path_strategy=symlink_strategy,
            max_cas_blob_size_bytes=max_blob_size,
            supported_compressors=[re_pb2.Compressor.ZSTD],
            supported_batch_update_compressors=[re_pb2.Compressor.ZSTD],
        ),
        execution_capabilities=re_pb2.ExecutionCapabilities(
            digest_function=SHA256,
            digest_functions=[SHA256],
            exec_enabled=exec_enabled,
            execution_priority_capabilities=re_pb2.PriorityCapabilities(
                priorities=[
                    re_pb2.PriorityCapabilities.PriorityRange(
                        min_priority=INT32_MIN, max_priority=INT32_MAX
                    )
                ]
            ),
        ),
        deprecated_api_version=DEPRECATED_API_VERSION,
        low_api_version=LOW_API_VERSION,
        high_api_version=HIGH_API_VERSION,
    )


class CapabilitiesServicer(re_grpc.CapabilitiesServicer):
    def __init__(self, capabilities: re_pb2.ServerCapabilities) -> None:
        self._capabilities = capabilities

    @grpc_errors
    async def GetCapabilities(
        self, request: re_pb2.GetCapabilitiesRequest, context: Any
    ) -> re_pb2.ServerCapabilities:
        validate_instance_name(request.instance_name)
        return self._capabilities
