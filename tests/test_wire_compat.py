"""Wire compatibility of our .proto files with the upstream protocols.

The tables below are facts of the wire format (package, message, field number,
name, type, label, oneof; enum values; service methods), transcribed from the
upstream-compiled descriptors in ``reference/wire-tables.md``:

- bazelbuild/remote-apis at becdd8f9ff81 (REAPI v2, semver),
- buildbarn/bb-remote-execution at 13313e6ab05b (remoteworker, buildqueuestate,
  resourceusage),
- buildbarn/bb-remote-execution pkg/proto/configuration/scheduler (the action router
  configuration, read from its .proto at 1213704e869f; the feedback-driven analyzer's
  messages, whose PageRank options moved into `page_rank`, at 13313e6ab05b),
- googleapis google/bytestream.

They are kept here as literals so the test runs without the shared docs. Every
message, enum and service of the six files is listed, and the comparison is
exact: a renumbered, renamed, retyped, added or removed field fails, and so does
a message, enum value or method that upstream does not have. Map fields appear
as upstream's descriptors show them: a repeated ``...Entry`` message.

To update after an upstream change: edit the .proto, run ``scripts/gen-protos``,
and add the new rows here from the upstream descriptor, never from our own.
"""

from __future__ import annotations

import types
from collections import defaultdict

import pytest
from google.protobuf import descriptor, descriptor_pb2

from redbarn.proto import (
    buildqueuestate_pb2,
    bytestream_pb2,
    remote_execution_pb2,
    remoteworker_pb2,
    resourceusage_pb2,
    scheduler_pb2,
    semver_pb2,
)

# Upstream file of each table row.
REAPI = "build/bazel/remote/execution/v2/remote_execution.proto"
SEMVER = "build/bazel/semver/semver.proto"
BYTESTREAM = "google/bytestream/bytestream.proto"
REMOTEWORKER = "pkg/proto/remoteworker/remoteworker.proto"
BUILDQUEUESTATE = "pkg/proto/buildqueuestate/buildqueuestate.proto"
RESOURCEUSAGE = "pkg/proto/resourceusage/resourceusage.proto"
SCHEDULER = "pkg/proto/configuration/scheduler/scheduler.proto"

# Upstream file -> (its package, our generated module).
FILES: dict[str, tuple[str, types.ModuleType]] = {
    REAPI: ("build.bazel.remote.execution.v2", remote_execution_pb2),
    SEMVER: ("build.bazel.semver", semver_pb2),
    BYTESTREAM: ("google.bytestream", bytestream_pb2),
    REMOTEWORKER: ("buildbarn.remoteworker", remoteworker_pb2),
    BUILDQUEUESTATE: ("buildbarn.buildqueuestate", buildqueuestate_pb2),
    RESOURCEUSAGE: ("buildbarn.resourceusage", resourceusage_pb2),
    SCHEDULER: ("buildbarn.configuration.scheduler", scheduler_pb2),
}

# fmt: off
# (upstream file, message, number, field, type, repeated, oneof)
FIELDS: list[tuple[str, str, int, str, str, bool, str | None]] = [
    (REAPI, "build.bazel.remote.execution.v2.Action", 1, "command_digest", "build.bazel.remote.execution.v2.Digest", False, None),
    (REAPI, "build.bazel.remote.execution.v2.Action", 2, "input_root_digest", "build.bazel.remote.execution.v2.Digest", False, None),
    (REAPI, "build.bazel.remote.execution.v2.Action", 6, "timeout", "google.protobuf.Duration", False, None),
    (REAPI, "build.bazel.remote.execution.v2.Action", 7, "do_not_cache", "bool", False, None),
    (REAPI, "build.bazel.remote.execution.v2.Action", 9, "salt", "bytes", False, None),
    (REAPI, "build.bazel.remote.execution.v2.Action", 10, "platform", "build.bazel.remote.execution.v2.Platform", False, None),
    (REAPI, "build.bazel.remote.execution.v2.ActionCacheUpdateCapabilities", 1, "update_enabled", "bool", False, None),
    (REAPI, "build.bazel.remote.execution.v2.ActionResult", 2, "output_files", "build.bazel.remote.execution.v2.OutputFile", True,  None),
    (REAPI, "build.bazel.remote.execution.v2.ActionResult", 3, "output_directories", "build.bazel.remote.execution.v2.OutputDirectory", True,  None),
    (REAPI, "build.bazel.remote.execution.v2.ActionResult", 4, "exit_code", "int32", False, None),
    (REAPI, "build.bazel.remote.execution.v2.ActionResult", 5, "stdout_raw", "bytes", False, None),
    (REAPI, "build.bazel.remote.execution.v2.ActionResult", 6, "stdout_digest", "build.bazel.remote.execution.v2.Digest", False, None),
    (REAPI, "build.bazel.remote.execution.v2.ActionResult", 7, "stderr_raw", "bytes", False, None),
    (REAPI, "build.bazel.remote.execution.v2.ActionResult", 8, "stderr_digest", "build.bazel.remote.execution.v2.Digest", False, None),
    (REAPI, "build.bazel.remote.execution.v2.ActionResult", 9, "execution_metadata", "build.bazel.remote.execution.v2.ExecutedActionMetadata", False, None),
    (REAPI, "build.bazel.remote.execution.v2.ActionResult", 10, "output_file_symlinks", "build.bazel.remote.execution.v2.OutputSymlink", True,  None),
    (REAPI, "build.bazel.remote.execution.v2.ActionResult", 11, "output_directory_symlinks", "build.bazel.remote.execution.v2.OutputSymlink", True,  None),
    (REAPI, "build.bazel.remote.execution.v2.ActionResult", 12, "output_symlinks", "build.bazel.remote.execution.v2.OutputSymlink", True,  None),
    (REAPI, "build.bazel.remote.execution.v2.BatchReadBlobsRequest", 1, "instance_name", "string", False, None),
    (REAPI, "build.bazel.remote.execution.v2.BatchReadBlobsRequest", 2, "digests", "build.bazel.remote.execution.v2.Digest", True,  None),
    (REAPI, "build.bazel.remote.execution.v2.BatchReadBlobsRequest", 3, "acceptable_compressors", "build.bazel.remote.execution.v2.Compressor.Value", True,  None),
    (REAPI, "build.bazel.remote.execution.v2.BatchReadBlobsRequest", 4, "digest_function", "build.bazel.remote.execution.v2.DigestFunction.Value", False, None),
    (REAPI, "build.bazel.remote.execution.v2.BatchReadBlobsResponse", 1, "responses", "build.bazel.remote.execution.v2.BatchReadBlobsResponse.Response", True,  None),
    (REAPI, "build.bazel.remote.execution.v2.BatchReadBlobsResponse.Response", 1, "digest", "build.bazel.remote.execution.v2.Digest", False, None),
    (REAPI, "build.bazel.remote.execution.v2.BatchReadBlobsResponse.Response", 2, "data", "bytes", False, None),
    (REAPI, "build.bazel.remote.execution.v2.BatchReadBlobsResponse.Response", 3, "status", "google.rpc.Status", False, None),
    (REAPI, "build.bazel.remote.execution.v2.BatchReadBlobsResponse.Response", 4, "compressor", "build.bazel.remote.execution.v2.Compressor.Value", False, None),
    (REAPI, "build.bazel.remote.execution.v2.BatchUpdateBlobsRequest", 1, "instance_name", "string", False, None),
    (REAPI, "build.bazel.remote.execution.v2.BatchUpdateBlobsRequest", 2, "requests", "build.bazel.remote.execution.v2.BatchUpdateBlobsRequest.Request", True,  None),
    (REAPI, "build.bazel.remote.execution.v2.BatchUpdateBlobsRequest", 5, "digest_function", "build.bazel.remote.execution.v2.DigestFunction.Value", False, None),
    (REAPI, "build.bazel.remote.execution.v2.BatchUpdateBlobsRequest.Request", 1, "digest", "build.bazel.remote.execution.v2.Digest", False, None),
    (REAPI, "build.bazel.remote.execution.v2.BatchUpdateBlobsRequest.Request", 2, "data", "bytes", False, None),
    (REAPI, "build.bazel.remote.execution.v2.BatchUpdateBlobsRequest.Request", 3, "compressor", "build.bazel.remote.execution.v2.Compressor.Value", False, None),
    (REAPI, "build.bazel.remote.execution.v2.BatchUpdateBlobsResponse", 1, "responses", "build.bazel.remote.execution.v2.BatchUpdateBlobsResponse.Response", True,  None),
    (REAPI, "build.bazel.remote.execution.v2.BatchUpdateBlobsResponse.Response", 1, "digest", "build.bazel.remote.execution.v2.Digest", False, None),
    (REAPI, "build.bazel.remote.execution.v2.BatchUpdateBlobsResponse.Response", 2, "status", "google.rpc.Status", False, None),
    (REAPI, "build.bazel.remote.execution.v2.CacheCapabilities", 1, "digest_functions", "build.bazel.remote.execution.v2.DigestFunction.Value", True,  None),
    (REAPI, "build.bazel.remote.execution.v2.CacheCapabilities", 2, "action_cache_update_capabilities", "build.bazel.remote.execution.v2.ActionCacheUpdateCapabilities", False, None),
    (REAPI, "build.bazel.remote.execution.v2.CacheCapabilities", 3, "cache_priority_capabilities", "build.bazel.remote.execution.v2.PriorityCapabilities", False, None),
    (REAPI, "build.bazel.remote.execution.v2.CacheCapabilities", 4, "max_batch_total_size_bytes", "int64", False, None),
    (REAPI, "build.bazel.remote.execution.v2.CacheCapabilities", 5, "symlink_absolute_path_strategy", "build.bazel.remote.execution.v2.SymlinkAbsolutePathStrategy.Value", False, None),
    (REAPI, "build.bazel.remote.execution.v2.CacheCapabilities", 6, "supported_compressors", "build.bazel.remote.execution.v2.Compressor.Value", True,  None),
    (REAPI, "build.bazel.remote.execution.v2.CacheCapabilities", 7, "supported_batch_update_compressors", "build.bazel.remote.execution.v2.Compressor.Value", True,  None),
    (REAPI, "build.bazel.remote.execution.v2.CacheCapabilities", 8, "max_cas_blob_size_bytes", "int64", False, None),
    (REAPI, "build.bazel.remote.execution.v2.CacheCapabilities", 9, "split_blob_support", "bool", False, None),
    (REAPI, "build.bazel.remote.execution.v2.CacheCapabilities", 10, "splice_blob_support", "bool", False, None),
    (REAPI, "build.bazel.remote.execution.v2.CacheCapabilities", 11, "fast_cdc_2020_params", "build.bazel.remote.execution.v2.FastCdc2020Params", False, None),
    (REAPI, "build.bazel.remote.execution.v2.CacheCapabilities", 12, "rep_max_cdc_params", "build.bazel.remote.execution.v2.RepMaxCdcParams", False, None),
    (REAPI, "build.bazel.remote.execution.v2.Command", 1, "arguments", "string", True,  None),
    (REAPI, "build.bazel.remote.execution.v2.Command", 2, "environment_variables", "build.bazel.remote.execution.v2.Command.EnvironmentVariable", True,  None),
    (REAPI, "build.bazel.remote.execution.v2.Command", 3, "output_files", "string", True,  None),
    (REAPI, "build.bazel.remote.execution.v2.Command", 4, "output_directories", "string", True,  None),
    (REAPI, "build.bazel.remote.execution.v2.Command", 5, "platform", "build.bazel.remote.execution.v2.Platform", False, None),
    (REAPI, "build.bazel.remote.execution.v2.Command", 6, "working_directory", "string", False, None),
    (REAPI, "build.bazel.remote.execution.v2.Command", 7, "output_paths", "string", True,  None),
    (REAPI, "build.bazel.remote.execution.v2.Command", 8, "output_node_properties", "string", True,  None),
    (REAPI, "build.bazel.remote.execution.v2.Command", 9, "output_directory_format", "build.bazel.remote.execution.v2.Command.OutputDirectoryFormat", False, None),
    (REAPI, "build.bazel.remote.execution.v2.Command.EnvironmentVariable", 1, "name", "string", False, None),
    (REAPI, "build.bazel.remote.execution.v2.Command.EnvironmentVariable", 2, "value", "string", False, None),
    (REAPI, "build.bazel.remote.execution.v2.Digest", 1, "hash", "string", False, None),
    (REAPI, "build.bazel.remote.execution.v2.Digest", 2, "size_bytes", "int64", False, None),
    (REAPI, "build.bazel.remote.execution.v2.Directory", 1, "files", "build.bazel.remote.execution.v2.FileNode", True,  None),
    (REAPI, "build.bazel.remote.execution.v2.Directory", 2, "directories", "build.bazel.remote.execution.v2.DirectoryNode", True,  None),
    (REAPI, "build.bazel.remote.execution.v2.Directory", 3, "symlinks", "build.bazel.remote.execution.v2.SymlinkNode", True,  None),
    (REAPI, "build.bazel.remote.execution.v2.Directory", 5, "node_properties", "build.bazel.remote.execution.v2.NodeProperties", False, None),
    (REAPI, "build.bazel.remote.execution.v2.DirectoryNode", 1, "name", "string", False, None),
    (REAPI, "build.bazel.remote.execution.v2.DirectoryNode", 2, "digest", "build.bazel.remote.execution.v2.Digest", False, None),
    (REAPI, "build.bazel.remote.execution.v2.ExecuteOperationMetadata", 1, "stage", "build.bazel.remote.execution.v2.ExecutionStage.Value", False, None),
    (REAPI, "build.bazel.remote.execution.v2.ExecuteOperationMetadata", 2, "action_digest", "build.bazel.remote.execution.v2.Digest", False, None),
    (REAPI, "build.bazel.remote.execution.v2.ExecuteOperationMetadata", 3, "stdout_stream_name", "string", False, None),
    (REAPI, "build.bazel.remote.execution.v2.ExecuteOperationMetadata", 4, "stderr_stream_name", "string", False, None),
    (REAPI, "build.bazel.remote.execution.v2.ExecuteOperationMetadata", 5, "partial_execution_metadata", "build.bazel.remote.execution.v2.ExecutedActionMetadata", False, None),
    (REAPI, "build.bazel.remote.execution.v2.ExecuteOperationMetadata", 6, "digest_function", "build.bazel.remote.execution.v2.DigestFunction.Value", False, None),
    (REAPI, "build.bazel.remote.execution.v2.ExecuteRequest", 1, "instance_name", "string", False, None),
    (REAPI, "build.bazel.remote.execution.v2.ExecuteRequest", 3, "skip_cache_lookup", "bool", False, None),
    (REAPI, "build.bazel.remote.execution.v2.ExecuteRequest", 6, "action_digest", "build.bazel.remote.execution.v2.Digest", False, None),
    (REAPI, "build.bazel.remote.execution.v2.ExecuteRequest", 7, "execution_policy", "build.bazel.remote.execution.v2.ExecutionPolicy", False, None),
    (REAPI, "build.bazel.remote.execution.v2.ExecuteRequest", 8, "results_cache_policy", "build.bazel.remote.execution.v2.ResultsCachePolicy", False, None),
    (REAPI, "build.bazel.remote.execution.v2.ExecuteRequest", 9, "digest_function", "build.bazel.remote.execution.v2.DigestFunction.Value", False, None),
    (REAPI, "build.bazel.remote.execution.v2.ExecuteRequest", 10, "inline_stdout", "bool", False, None),
    (REAPI, "build.bazel.remote.execution.v2.ExecuteRequest", 11, "inline_stderr", "bool", False, None),
    (REAPI, "build.bazel.remote.execution.v2.ExecuteRequest", 12, "inline_output_files", "string", True,  None),
    (REAPI, "build.bazel.remote.execution.v2.ExecuteResponse", 1, "result", "build.bazel.remote.execution.v2.ActionResult", False, None),
    (REAPI, "build.bazel.remote.execution.v2.ExecuteResponse", 2, "cached_result", "bool", False, None),
    (REAPI, "build.bazel.remote.execution.v2.ExecuteResponse", 3, "status", "google.rpc.Status", False, None),
    (REAPI, "build.bazel.remote.execution.v2.ExecuteResponse", 4, "server_logs", "build.bazel.remote.execution.v2.ExecuteResponse.ServerLogsEntry", True,  None),
    (REAPI, "build.bazel.remote.execution.v2.ExecuteResponse", 5, "message", "string", False, None),
    (REAPI, "build.bazel.remote.execution.v2.ExecuteResponse.ServerLogsEntry", 1, "key", "string", False, None),
    (REAPI, "build.bazel.remote.execution.v2.ExecuteResponse.ServerLogsEntry", 2, "value", "build.bazel.remote.execution.v2.LogFile", False, None),
    (REAPI, "build.bazel.remote.execution.v2.ExecutedActionMetadata", 1, "worker", "string", False, None),
    (REAPI, "build.bazel.remote.execution.v2.ExecutedActionMetadata", 2, "queued_timestamp", "google.protobuf.Timestamp", False, None),
    (REAPI, "build.bazel.remote.execution.v2.ExecutedActionMetadata", 3, "worker_start_timestamp", "google.protobuf.Timestamp", False, None),
    (REAPI, "build.bazel.remote.execution.v2.ExecutedActionMetadata", 4, "worker_completed_timestamp", "google.protobuf.Timestamp", False, None),
    (REAPI, "build.bazel.remote.execution.v2.ExecutedActionMetadata", 5, "input_fetch_start_timestamp", "google.protobuf.Timestamp", False, None),
    (REAPI, "build.bazel.remote.execution.v2.ExecutedActionMetadata", 6, "input_fetch_completed_timestamp", "google.protobuf.Timestamp", False, None),
    (REAPI, "build.bazel.remote.execution.v2.ExecutedActionMetadata", 7, "execution_start_timestamp", "google.protobuf.Timestamp", False, None),
    (REAPI, "build.bazel.remote.execution.v2.ExecutedActionMetadata", 8, "execution_completed_timestamp", "google.protobuf.Timestamp", False, None),
    (REAPI, "build.bazel.remote.execution.v2.ExecutedActionMetadata", 9, "output_upload_start_timestamp", "google.protobuf.Timestamp", False, None),
    (REAPI, "build.bazel.remote.execution.v2.ExecutedActionMetadata", 10, "output_upload_completed_timestamp", "google.protobuf.Timestamp", False, None),
    (REAPI, "build.bazel.remote.execution.v2.ExecutedActionMetadata", 11, "auxiliary_metadata", "google.protobuf.Any", True,  None),
    (REAPI, "build.bazel.remote.execution.v2.ExecutedActionMetadata", 12, "virtual_execution_duration", "google.protobuf.Duration", False, None),
    (REAPI, "build.bazel.remote.execution.v2.ExecutionCapabilities", 1, "digest_function", "build.bazel.remote.execution.v2.DigestFunction.Value", False, None),
    (REAPI, "build.bazel.remote.execution.v2.ExecutionCapabilities", 2, "exec_enabled", "bool", False, None),
    (REAPI, "build.bazel.remote.execution.v2.ExecutionCapabilities", 3, "execution_priority_capabilities", "build.bazel.remote.execution.v2.PriorityCapabilities", False, None),
    (REAPI, "build.bazel.remote.execution.v2.ExecutionCapabilities", 4, "supported_node_properties", "string", True,  None),
    (REAPI, "build.bazel.remote.execution.v2.ExecutionCapabilities", 5, "digest_functions", "build.bazel.remote.execution.v2.DigestFunction.Value", True,  None),
    (REAPI, "build.bazel.remote.execution.v2.ExecutionPolicy", 1, "priority", "int32", False, None),
    (REAPI, "build.bazel.remote.execution.v2.FastCdc2020Params", 1, "avg_chunk_size_bytes", "uint64", False, None),
    (REAPI, "build.bazel.remote.execution.v2.FastCdc2020Params", 2, "seed", "uint32", False, None),
    (REAPI, "build.bazel.remote.execution.v2.FileNode", 1, "name", "string", False, None),
    (REAPI, "build.bazel.remote.execution.v2.FileNode", 2, "digest", "build.bazel.remote.execution.v2.Digest", False, None),
    (REAPI, "build.bazel.remote.execution.v2.FileNode", 4, "is_executable", "bool", False, None),
    (REAPI, "build.bazel.remote.execution.v2.FileNode", 6, "node_properties", "build.bazel.remote.execution.v2.NodeProperties", False, None),
    (REAPI, "build.bazel.remote.execution.v2.FindMissingBlobsRequest", 1, "instance_name", "string", False, None),
    (REAPI, "build.bazel.remote.execution.v2.FindMissingBlobsRequest", 2, "blob_digests", "build.bazel.remote.execution.v2.Digest", True,  None),
    (REAPI, "build.bazel.remote.execution.v2.FindMissingBlobsRequest", 3, "digest_function", "build.bazel.remote.execution.v2.DigestFunction.Value", False, None),
    (REAPI, "build.bazel.remote.execution.v2.FindMissingBlobsResponse", 2, "missing_blob_digests", "build.bazel.remote.execution.v2.Digest", True,  None),
    (REAPI, "build.bazel.remote.execution.v2.GetActionResultRequest", 1, "instance_name", "string", False, None),
    (REAPI, "build.bazel.remote.execution.v2.GetActionResultRequest", 2, "action_digest", "build.bazel.remote.execution.v2.Digest", False, None),
    (REAPI, "build.bazel.remote.execution.v2.GetActionResultRequest", 3, "inline_stdout", "bool", False, None),
    (REAPI, "build.bazel.remote.execution.v2.GetActionResultRequest", 4, "inline_stderr", "bool", False, None),
    (REAPI, "build.bazel.remote.execution.v2.GetActionResultRequest", 5, "inline_output_files", "string", True,  None),
    (REAPI, "build.bazel.remote.execution.v2.GetActionResultRequest", 6, "digest_function", "build.bazel.remote.execution.v2.DigestFunction.Value", False, None),
    (REAPI, "build.bazel.remote.execution.v2.GetCapabilitiesRequest", 1, "instance_name", "string", False, None),
    (REAPI, "build.bazel.remote.execution.v2.GetTreeRequest", 1, "instance_name", "string", False, None),
    (REAPI, "build.bazel.remote.execution.v2.GetTreeRequest", 2, "root_digest", "build.bazel.remote.execution.v2.Digest", False, None),
    (REAPI, "build.bazel.remote.execution.v2.GetTreeRequest", 3, "page_size", "int32", False, None),
    (REAPI, "build.bazel.remote.execution.v2.GetTreeRequest", 4, "page_token", "string", False, None),
    (REAPI, "build.bazel.remote.execution.v2.GetTreeRequest", 5, "digest_function", "build.bazel.remote.execution.v2.DigestFunction.Value", False, None),
    (REAPI, "build.bazel.remote.execution.v2.GetTreeResponse", 1, "directories", "build.bazel.remote.execution.v2.Directory", True,  None),
    (REAPI, "build.bazel.remote.execution.v2.GetTreeResponse", 2, "next_page_token", "string", False, None),
    (REAPI, "build.bazel.remote.execution.v2.LogFile", 1, "digest", "build.bazel.remote.execution.v2.Digest", False, None),
    (REAPI, "build.bazel.remote.execution.v2.LogFile", 2, "human_readable", "bool", False, None),
    (REAPI, "build.bazel.remote.execution.v2.NodeProperties", 1, "properties", "build.bazel.remote.execution.v2.NodeProperty", True,  None),
    (REAPI, "build.bazel.remote.execution.v2.NodeProperties", 2, "mtime", "google.protobuf.Timestamp", False, None),
    (REAPI, "build.bazel.remote.execution.v2.NodeProperties", 3, "unix_mode", "google.protobuf.UInt32Value", False, None),
    (REAPI, "build.bazel.remote.execution.v2.NodeProperty", 1, "name", "string", False, None),
    (REAPI, "build.bazel.remote.execution.v2.NodeProperty", 2, "value", "string", False, None),
    (REAPI, "build.bazel.remote.execution.v2.OutputDirectory", 1, "path", "string", False, None),
    (REAPI, "build.bazel.remote.execution.v2.OutputDirectory", 3, "tree_digest", "build.bazel.remote.execution.v2.Digest", False, None),
    (REAPI, "build.bazel.remote.execution.v2.OutputDirectory", 4, "is_topologically_sorted", "bool", False, None),
    (REAPI, "build.bazel.remote.execution.v2.OutputDirectory", 5, "root_directory_digest", "build.bazel.remote.execution.v2.Digest", False, None),
    (REAPI, "build.bazel.remote.execution.v2.OutputFile", 1, "path", "string", False, None),
    (REAPI, "build.bazel.remote.execution.v2.OutputFile", 2, "digest", "build.bazel.remote.execution.v2.Digest", False, None),
    (REAPI, "build.bazel.remote.execution.v2.OutputFile", 4, "is_executable", "bool", False, None),
    (REAPI, "build.bazel.remote.execution.v2.OutputFile", 5, "contents", "bytes", False, None),
    (REAPI, "build.bazel.remote.execution.v2.OutputFile", 7, "node_properties", "build.bazel.remote.execution.v2.NodeProperties", False, None),
    (REAPI, "build.bazel.remote.execution.v2.OutputSymlink", 1, "path", "string", False, None),
    (REAPI, "build.bazel.remote.execution.v2.OutputSymlink", 2, "target", "string", False, None),
    (REAPI, "build.bazel.remote.execution.v2.OutputSymlink", 4, "node_properties", "build.bazel.remote.execution.v2.NodeProperties", False, None),
    (REAPI, "build.bazel.remote.execution.v2.Platform", 1, "properties", "build.bazel.remote.execution.v2.Platform.Property", True,  None),
    (REAPI, "build.bazel.remote.execution.v2.Platform.Property", 1, "name", "string", False, None),
    (REAPI, "build.bazel.remote.execution.v2.Platform.Property", 2, "value", "string", False, None),
    (REAPI, "build.bazel.remote.execution.v2.PriorityCapabilities", 1, "priorities", "build.bazel.remote.execution.v2.PriorityCapabilities.PriorityRange", True,  None),
    (REAPI, "build.bazel.remote.execution.v2.PriorityCapabilities.PriorityRange", 1, "min_priority", "int32", False, None),
    (REAPI, "build.bazel.remote.execution.v2.PriorityCapabilities.PriorityRange", 2, "max_priority", "int32", False, None),
    (REAPI, "build.bazel.remote.execution.v2.RepMaxCdcParams", 1, "min_chunk_size_bytes", "uint64", False, None),
    (REAPI, "build.bazel.remote.execution.v2.RepMaxCdcParams", 2, "horizon_size_bytes", "uint64", False, None),
    (REAPI, "build.bazel.remote.execution.v2.RequestMetadata", 1, "tool_details", "build.bazel.remote.execution.v2.ToolDetails", False, None),
    (REAPI, "build.bazel.remote.execution.v2.RequestMetadata", 2, "action_id", "string", False, None),
    (REAPI, "build.bazel.remote.execution.v2.RequestMetadata", 3, "tool_invocation_id", "string", False, None),
    (REAPI, "build.bazel.remote.execution.v2.RequestMetadata", 4, "correlated_invocations_id", "string", False, None),
    (REAPI, "build.bazel.remote.execution.v2.RequestMetadata", 5, "action_mnemonic", "string", False, None),
    (REAPI, "build.bazel.remote.execution.v2.RequestMetadata", 6, "target_id", "string", False, None),
    (REAPI, "build.bazel.remote.execution.v2.RequestMetadata", 7, "configuration_id", "string", False, None),
    (REAPI, "build.bazel.remote.execution.v2.ResultsCachePolicy", 1, "priority", "int32", False, None),
    (REAPI, "build.bazel.remote.execution.v2.ServerCapabilities", 1, "cache_capabilities", "build.bazel.remote.execution.v2.CacheCapabilities", False, None),
    (REAPI, "build.bazel.remote.execution.v2.ServerCapabilities", 2, "execution_capabilities", "build.bazel.remote.execution.v2.ExecutionCapabilities", False, None),
    (REAPI, "build.bazel.remote.execution.v2.ServerCapabilities", 3, "deprecated_api_version", "build.bazel.semver.SemVer", False, None),
    (REAPI, "build.bazel.remote.execution.v2.ServerCapabilities", 4, "low_api_version", "build.bazel.semver.SemVer", False, None),
    (REAPI, "build.bazel.remote.execution.v2.ServerCapabilities", 5, "high_api_version", "build.bazel.semver.SemVer", False, None),
    (REAPI, "build.bazel.remote.execution.v2.SpliceBlobRequest", 1, "instance_name", "string", False, None),
    (REAPI, "build.bazel.remote.execution.v2.SpliceBlobRequest", 2, "blob_digest", "build.bazel.remote.execution.v2.Digest", False, None),
    (REAPI, "build.bazel.remote.execution.v2.SpliceBlobRequest", 3, "chunk_digests", "build.bazel.remote.execution.v2.Digest", True,  None),
    (REAPI, "build.bazel.remote.execution.v2.SpliceBlobRequest", 4, "digest_function", "build.bazel.remote.execution.v2.DigestFunction.Value", False, None),
    (REAPI, "build.bazel.remote.execution.v2.SpliceBlobRequest", 5, "chunking_function", "build.bazel.remote.execution.v2.ChunkingFunction.Value", False, None),
    (REAPI, "build.bazel.remote.execution.v2.SpliceBlobResponse", 1, "blob_digest", "build.bazel.remote.execution.v2.Digest", False, None),
    (REAPI, "build.bazel.remote.execution.v2.SplitBlobRequest", 1, "instance_name", "string", False, None),
    (REAPI, "build.bazel.remote.execution.v2.SplitBlobRequest", 2, "blob_digest", "build.bazel.remote.execution.v2.Digest", False, None),
    (REAPI, "build.bazel.remote.execution.v2.SplitBlobRequest", 3, "digest_function", "build.bazel.remote.execution.v2.DigestFunction.Value", False, None),
    (REAPI, "build.bazel.remote.execution.v2.SplitBlobRequest", 4, "chunking_function", "build.bazel.remote.execution.v2.ChunkingFunction.Value", False, None),
    (REAPI, "build.bazel.remote.execution.v2.SplitBlobResponse", 1, "chunk_digests", "build.bazel.remote.execution.v2.Digest", True,  None),
    (REAPI, "build.bazel.remote.execution.v2.SplitBlobResponse", 2, "chunking_function", "build.bazel.remote.execution.v2.ChunkingFunction.Value", False, None),
    (REAPI, "build.bazel.remote.execution.v2.SymlinkNode", 1, "name", "string", False, None),
    (REAPI, "build.bazel.remote.execution.v2.SymlinkNode", 2, "target", "string", False, None),
    (REAPI, "build.bazel.remote.execution.v2.SymlinkNode", 4, "node_properties", "build.bazel.remote.execution.v2.NodeProperties", False, None),
    (REAPI, "build.bazel.remote.execution.v2.ToolDetails", 1, "tool_name", "string", False, None),
    (REAPI, "build.bazel.remote.execution.v2.ToolDetails", 2, "tool_version", "string", False, None),
    (REAPI, "build.bazel.remote.execution.v2.Tree", 1, "root", "build.bazel.remote.execution.v2.Directory", False, None),
    (REAPI, "build.bazel.remote.execution.v2.Tree", 2, "children", "build.bazel.remote.execution.v2.Directory", True,  None),
    (REAPI, "build.bazel.remote.execution.v2.UpdateActionResultRequest", 1, "instance_name", "string", False, None),
    (REAPI, "build.bazel.remote.execution.v2.UpdateActionResultRequest", 2, "action_digest", "build.bazel.remote.execution.v2.Digest", False, None),
    (REAPI, "build.bazel.remote.execution.v2.UpdateActionResultRequest", 3, "action_result", "build.bazel.remote.execution.v2.ActionResult", False, None),
    (REAPI, "build.bazel.remote.execution.v2.UpdateActionResultRequest", 4, "results_cache_policy", "build.bazel.remote.execution.v2.ResultsCachePolicy", False, None),
    (REAPI, "build.bazel.remote.execution.v2.UpdateActionResultRequest", 5, "digest_function", "build.bazel.remote.execution.v2.DigestFunction.Value", False, None),
    (REAPI, "build.bazel.remote.execution.v2.WaitExecutionRequest", 1, "name", "string", False, None),
    (SEMVER, "build.bazel.semver.SemVer", 1, "major", "int32", False, None),
    (SEMVER, "build.bazel.semver.SemVer", 2, "minor", "int32", False, None),
    (SEMVER, "build.bazel.semver.SemVer", 3, "patch", "int32", False, None),
    (SEMVER, "build.bazel.semver.SemVer", 4, "prerelease", "string", False, None),
    (REMOTEWORKER, "buildbarn.remoteworker.CurrentState", 1, "idle", "google.protobuf.Empty", False, "worker_state"),
    (REMOTEWORKER, "buildbarn.remoteworker.CurrentState", 2, "executing", "buildbarn.remoteworker.CurrentState.Executing", False, "worker_state"),
    (REMOTEWORKER, "buildbarn.remoteworker.CurrentState.Executing", 1, "action_digest", "build.bazel.remote.execution.v2.Digest", False, None),
    (REMOTEWORKER, "buildbarn.remoteworker.CurrentState.Executing", 2, "started", "google.protobuf.Empty", False, "execution_state"),
    (REMOTEWORKER, "buildbarn.remoteworker.CurrentState.Executing", 3, "fetching_inputs", "google.protobuf.Empty", False, "execution_state"),
    (REMOTEWORKER, "buildbarn.remoteworker.CurrentState.Executing", 4, "running", "google.protobuf.Empty", False, "execution_state"),
    (REMOTEWORKER, "buildbarn.remoteworker.CurrentState.Executing", 5, "uploading_outputs", "google.protobuf.Empty", False, "execution_state"),
    (REMOTEWORKER, "buildbarn.remoteworker.CurrentState.Executing", 6, "completed", "build.bazel.remote.execution.v2.ExecuteResponse", False, "execution_state"),
    (REMOTEWORKER, "buildbarn.remoteworker.DesiredState", 1, "idle", "google.protobuf.Empty", False, "worker_state"),
    (REMOTEWORKER, "buildbarn.remoteworker.DesiredState", 2, "executing", "buildbarn.remoteworker.DesiredState.Executing", False, "worker_state"),
    (REMOTEWORKER, "buildbarn.remoteworker.DesiredState.Executing", 1, "action_digest", "build.bazel.remote.execution.v2.Digest", False, None),
    (REMOTEWORKER, "buildbarn.remoteworker.DesiredState.Executing", 2, "action", "build.bazel.remote.execution.v2.Action", False, None),
    (REMOTEWORKER, "buildbarn.remoteworker.DesiredState.Executing", 4, "queued_timestamp", "google.protobuf.Timestamp", False, None),
    (REMOTEWORKER, "buildbarn.remoteworker.DesiredState.Executing", 6, "auxiliary_metadata", "google.protobuf.Any", True,  None),
    (REMOTEWORKER, "buildbarn.remoteworker.DesiredState.Executing", 7, "instance_name_suffix", "string", False, None),
    (REMOTEWORKER, "buildbarn.remoteworker.DesiredState.Executing", 8, "w3c_trace_context", "buildbarn.remoteworker.DesiredState.Executing.W3cTraceContextEntry", True,  None),
    (REMOTEWORKER, "buildbarn.remoteworker.DesiredState.Executing", 9, "digest_function", "build.bazel.remote.execution.v2.DigestFunction.Value", False, None),
    (REMOTEWORKER, "buildbarn.remoteworker.DesiredState.Executing.W3cTraceContextEntry", 1, "key", "string", False, None),
    (REMOTEWORKER, "buildbarn.remoteworker.DesiredState.Executing.W3cTraceContextEntry", 2, "value", "string", False, None),
    (REMOTEWORKER, "buildbarn.remoteworker.SynchronizeRequest", 1, "worker_id", "buildbarn.remoteworker.SynchronizeRequest.WorkerIdEntry", True,  None),
    (REMOTEWORKER, "buildbarn.remoteworker.SynchronizeRequest", 2, "instance_name_prefix", "string", False, None),
    (REMOTEWORKER, "buildbarn.remoteworker.SynchronizeRequest", 3, "platform", "build.bazel.remote.execution.v2.Platform", False, None),
    (REMOTEWORKER, "buildbarn.remoteworker.SynchronizeRequest", 4, "current_state", "buildbarn.remoteworker.CurrentState", False, None),
    (REMOTEWORKER, "buildbarn.remoteworker.SynchronizeRequest", 5, "size_class", "uint32", False, None),
    (REMOTEWORKER, "buildbarn.remoteworker.SynchronizeRequest", 6, "prefer_being_idle", "bool", False, None),
    (REMOTEWORKER, "buildbarn.remoteworker.SynchronizeRequest.WorkerIdEntry", 1, "key", "string", False, None),
    (REMOTEWORKER, "buildbarn.remoteworker.SynchronizeRequest.WorkerIdEntry", 2, "value", "string", False, None),
    (REMOTEWORKER, "buildbarn.remoteworker.SynchronizeResponse", 1, "next_synchronization_at", "google.protobuf.Timestamp", False, None),
    (REMOTEWORKER, "buildbarn.remoteworker.SynchronizeResponse", 2, "desired_state", "buildbarn.remoteworker.DesiredState", False, None),
    (BUILDQUEUESTATE, "buildbarn.buildqueuestate.AddOrRemoveDrainRequest", 1, "size_class_queue_name", "buildbarn.buildqueuestate.SizeClassQueueName", False, None),
    (BUILDQUEUESTATE, "buildbarn.buildqueuestate.AddOrRemoveDrainRequest", 2, "worker_id_pattern", "buildbarn.buildqueuestate.AddOrRemoveDrainRequest.WorkerIdPatternEntry", True,  None),
    (BUILDQUEUESTATE, "buildbarn.buildqueuestate.AddOrRemoveDrainRequest.WorkerIdPatternEntry", 1, "key", "string", False, None),
    (BUILDQUEUESTATE, "buildbarn.buildqueuestate.AddOrRemoveDrainRequest.WorkerIdPatternEntry", 2, "value", "string", False, None),
    (BUILDQUEUESTATE, "buildbarn.buildqueuestate.DrainState", 1, "worker_id_pattern", "buildbarn.buildqueuestate.DrainState.WorkerIdPatternEntry", True,  None),
    (BUILDQUEUESTATE, "buildbarn.buildqueuestate.DrainState", 2, "created_timestamp", "google.protobuf.Timestamp", False, None),
    (BUILDQUEUESTATE, "buildbarn.buildqueuestate.DrainState.WorkerIdPatternEntry", 1, "key", "string", False, None),
    (BUILDQUEUESTATE, "buildbarn.buildqueuestate.DrainState.WorkerIdPatternEntry", 2, "value", "string", False, None),
    (BUILDQUEUESTATE, "buildbarn.buildqueuestate.GetOperationRequest", 1, "operation_name", "string", False, None),
    (BUILDQUEUESTATE, "buildbarn.buildqueuestate.GetOperationResponse", 1, "operation", "buildbarn.buildqueuestate.OperationState", False, None),
    (BUILDQUEUESTATE, "buildbarn.buildqueuestate.InvocationChildState", 1, "id", "google.protobuf.Any", False, None),
    (BUILDQUEUESTATE, "buildbarn.buildqueuestate.InvocationChildState", 2, "state", "buildbarn.buildqueuestate.InvocationState", False, None),
    (BUILDQUEUESTATE, "buildbarn.buildqueuestate.InvocationName", 1, "size_class_queue_name", "buildbarn.buildqueuestate.SizeClassQueueName", False, None),
    (BUILDQUEUESTATE, "buildbarn.buildqueuestate.InvocationName", 2, "ids", "google.protobuf.Any", True,  None),
    (BUILDQUEUESTATE, "buildbarn.buildqueuestate.InvocationState", 2, "queued_operations_count", "buildbarn.buildqueuestate.InvocationState.InvocationObjectCount", False, None),
    (BUILDQUEUESTATE, "buildbarn.buildqueuestate.InvocationState", 4, "executing_workers_count", "uint32", False, None),
    (BUILDQUEUESTATE, "buildbarn.buildqueuestate.InvocationState", 5, "idle_workers_count", "uint32", False, None),
    (BUILDQUEUESTATE, "buildbarn.buildqueuestate.InvocationState", 6, "idle_synchronizing_workers_count", "uint32", False, None),
    (BUILDQUEUESTATE, "buildbarn.buildqueuestate.InvocationState", 7, "children_count", "uint32", False, None),
    (BUILDQUEUESTATE, "buildbarn.buildqueuestate.InvocationState", 8, "active_children_count", "uint32", False, None),
    (BUILDQUEUESTATE, "buildbarn.buildqueuestate.InvocationState", 9, "queued_children_count", "uint32", False, None),
    (BUILDQUEUESTATE, "buildbarn.buildqueuestate.InvocationState.InvocationObjectCount", 1, "direct", "uint32", False, None),
    (BUILDQUEUESTATE, "buildbarn.buildqueuestate.InvocationState.InvocationObjectCount", 2, "indirect", "uint32", False, None),
    (BUILDQUEUESTATE, "buildbarn.buildqueuestate.KillOperationsRequest", 1, "filter", "buildbarn.buildqueuestate.KillOperationsRequest.Filter", False, None),
    (BUILDQUEUESTATE, "buildbarn.buildqueuestate.KillOperationsRequest", 2, "status", "google.rpc.Status", False, None),
    (BUILDQUEUESTATE, "buildbarn.buildqueuestate.KillOperationsRequest.Filter", 1, "operation_name", "string", False, "type"),
    (BUILDQUEUESTATE, "buildbarn.buildqueuestate.KillOperationsRequest.Filter", 2, "size_class_queue_without_workers", "buildbarn.buildqueuestate.SizeClassQueueName", False, "type"),
    (BUILDQUEUESTATE, "buildbarn.buildqueuestate.ListDrainsRequest", 1, "size_class_queue_name", "buildbarn.buildqueuestate.SizeClassQueueName", False, None),
    (BUILDQUEUESTATE, "buildbarn.buildqueuestate.ListDrainsResponse", 1, "drains", "buildbarn.buildqueuestate.DrainState", True,  None),
    (BUILDQUEUESTATE, "buildbarn.buildqueuestate.ListInvocationChildrenRequest", 1, "invocation_name", "buildbarn.buildqueuestate.InvocationName", False, None),
    (BUILDQUEUESTATE, "buildbarn.buildqueuestate.ListInvocationChildrenRequest", 2, "filter", "buildbarn.buildqueuestate.ListInvocationChildrenRequest.Filter", False, None),
    (BUILDQUEUESTATE, "buildbarn.buildqueuestate.ListInvocationChildrenResponse", 1, "children", "buildbarn.buildqueuestate.InvocationChildState", True,  None),
    (BUILDQUEUESTATE, "buildbarn.buildqueuestate.ListOperationsRequest", 1, "page_size", "uint32", False, None),
    (BUILDQUEUESTATE, "buildbarn.buildqueuestate.ListOperationsRequest", 2, "start_after", "buildbarn.buildqueuestate.ListOperationsRequest.StartAfter", False, None),
    (BUILDQUEUESTATE, "buildbarn.buildqueuestate.ListOperationsRequest", 3, "filter_invocation_id", "google.protobuf.Any", False, None),
    (BUILDQUEUESTATE, "buildbarn.buildqueuestate.ListOperationsRequest", 4, "filter_stage", "build.bazel.remote.execution.v2.ExecutionStage.Value", False, None),
    (BUILDQUEUESTATE, "buildbarn.buildqueuestate.ListOperationsRequest.StartAfter", 1, "operation_name", "string", False, None),
    (BUILDQUEUESTATE, "buildbarn.buildqueuestate.ListOperationsResponse", 1, "operations", "buildbarn.buildqueuestate.OperationState", True,  None),
    (BUILDQUEUESTATE, "buildbarn.buildqueuestate.ListOperationsResponse", 2, "pagination_info", "buildbarn.buildqueuestate.PaginationInfo", False, None),
    (BUILDQUEUESTATE, "buildbarn.buildqueuestate.ListPlatformQueuesResponse", 1, "platform_queues", "buildbarn.buildqueuestate.PlatformQueueState", True,  None),
    (BUILDQUEUESTATE, "buildbarn.buildqueuestate.ListQueuedOperationsRequest", 1, "invocation_name", "buildbarn.buildqueuestate.InvocationName", False, None),
    (BUILDQUEUESTATE, "buildbarn.buildqueuestate.ListQueuedOperationsRequest", 3, "page_size", "uint32", False, None),
    (BUILDQUEUESTATE, "buildbarn.buildqueuestate.ListQueuedOperationsRequest", 4, "start_after", "buildbarn.buildqueuestate.ListQueuedOperationsRequest.StartAfter", False, None),
    (BUILDQUEUESTATE, "buildbarn.buildqueuestate.ListQueuedOperationsRequest.StartAfter", 1, "priority", "int32", False, None),
    (BUILDQUEUESTATE, "buildbarn.buildqueuestate.ListQueuedOperationsRequest.StartAfter", 2, "queued_timestamp", "google.protobuf.Timestamp", False, None),
    (BUILDQUEUESTATE, "buildbarn.buildqueuestate.ListQueuedOperationsRequest.StartAfter", 3, "expected_duration", "google.protobuf.Duration", False, None),
    (BUILDQUEUESTATE, "buildbarn.buildqueuestate.ListQueuedOperationsResponse", 1, "queued_operations", "buildbarn.buildqueuestate.OperationState", True,  None),
    (BUILDQUEUESTATE, "buildbarn.buildqueuestate.ListQueuedOperationsResponse", 2, "pagination_info", "buildbarn.buildqueuestate.PaginationInfo", False, None),
    (BUILDQUEUESTATE, "buildbarn.buildqueuestate.ListWorkersRequest", 1, "filter", "buildbarn.buildqueuestate.ListWorkersRequest.Filter", False, None),
    (BUILDQUEUESTATE, "buildbarn.buildqueuestate.ListWorkersRequest", 3, "page_size", "uint32", False, None),
    (BUILDQUEUESTATE, "buildbarn.buildqueuestate.ListWorkersRequest", 4, "start_after", "buildbarn.buildqueuestate.ListWorkersRequest.StartAfter", False, None),
    (BUILDQUEUESTATE, "buildbarn.buildqueuestate.ListWorkersRequest.Filter", 1, "all", "buildbarn.buildqueuestate.SizeClassQueueName", False, "type"),
    (BUILDQUEUESTATE, "buildbarn.buildqueuestate.ListWorkersRequest.Filter", 2, "executing", "buildbarn.buildqueuestate.InvocationName", False, "type"),
    (BUILDQUEUESTATE, "buildbarn.buildqueuestate.ListWorkersRequest.Filter", 3, "idle_synchronizing", "buildbarn.buildqueuestate.InvocationName", False, "type"),
    (BUILDQUEUESTATE, "buildbarn.buildqueuestate.ListWorkersRequest.StartAfter", 1, "worker_id", "buildbarn.buildqueuestate.ListWorkersRequest.StartAfter.WorkerIdEntry", True,  None),
    (BUILDQUEUESTATE, "buildbarn.buildqueuestate.ListWorkersRequest.StartAfter.WorkerIdEntry", 1, "key", "string", False, None),
    (BUILDQUEUESTATE, "buildbarn.buildqueuestate.ListWorkersRequest.StartAfter.WorkerIdEntry", 2, "value", "string", False, None),
    (BUILDQUEUESTATE, "buildbarn.buildqueuestate.ListWorkersResponse", 1, "workers", "buildbarn.buildqueuestate.WorkerState", True,  None),
    (BUILDQUEUESTATE, "buildbarn.buildqueuestate.ListWorkersResponse", 2, "pagination_info", "buildbarn.buildqueuestate.PaginationInfo", False, None),
    (BUILDQUEUESTATE, "buildbarn.buildqueuestate.OperationState", 1, "name", "string", False, None),
    (BUILDQUEUESTATE, "buildbarn.buildqueuestate.OperationState", 2, "invocation_name", "buildbarn.buildqueuestate.InvocationName", False, None),
    (BUILDQUEUESTATE, "buildbarn.buildqueuestate.OperationState", 4, "queued_timestamp", "google.protobuf.Timestamp", False, None),
    (BUILDQUEUESTATE, "buildbarn.buildqueuestate.OperationState", 5, "action_digest", "build.bazel.remote.execution.v2.Digest", False, None),
    (BUILDQUEUESTATE, "buildbarn.buildqueuestate.OperationState", 7, "timeout", "google.protobuf.Timestamp", False, None),
    (BUILDQUEUESTATE, "buildbarn.buildqueuestate.OperationState", 8, "queued", "google.protobuf.Empty", False, "stage"),
    (BUILDQUEUESTATE, "buildbarn.buildqueuestate.OperationState", 9, "executing", "google.protobuf.Empty", False, "stage"),
    (BUILDQUEUESTATE, "buildbarn.buildqueuestate.OperationState", 10, "completed", "build.bazel.remote.execution.v2.ExecuteResponse", False, "stage"),
    (BUILDQUEUESTATE, "buildbarn.buildqueuestate.OperationState", 11, "target_id", "string", False, None),
    (BUILDQUEUESTATE, "buildbarn.buildqueuestate.OperationState", 12, "priority", "int32", False, None),
    (BUILDQUEUESTATE, "buildbarn.buildqueuestate.OperationState", 13, "instance_name_suffix", "string", False, None),
    (BUILDQUEUESTATE, "buildbarn.buildqueuestate.OperationState", 14, "expected_duration", "google.protobuf.Duration", False, None),
    (BUILDQUEUESTATE, "buildbarn.buildqueuestate.OperationState", 15, "digest_function", "build.bazel.remote.execution.v2.DigestFunction.Value", False, None),
    (BUILDQUEUESTATE, "buildbarn.buildqueuestate.PaginationInfo", 1, "start_index", "uint32", False, None),
    (BUILDQUEUESTATE, "buildbarn.buildqueuestate.PaginationInfo", 2, "total_entries", "uint32", False, None),
    (BUILDQUEUESTATE, "buildbarn.buildqueuestate.PlatformQueueName", 1, "instance_name_prefix", "string", False, None),
    (BUILDQUEUESTATE, "buildbarn.buildqueuestate.PlatformQueueName", 2, "platform", "build.bazel.remote.execution.v2.Platform", False, None),
    (BUILDQUEUESTATE, "buildbarn.buildqueuestate.PlatformQueueState", 1, "name", "buildbarn.buildqueuestate.PlatformQueueName", False, None),
    (BUILDQUEUESTATE, "buildbarn.buildqueuestate.PlatformQueueState", 2, "size_class_queues", "buildbarn.buildqueuestate.SizeClassQueueState", True,  None),
    (BUILDQUEUESTATE, "buildbarn.buildqueuestate.SizeClassQueueName", 1, "platform_queue_name", "buildbarn.buildqueuestate.PlatformQueueName", False, None),
    (BUILDQUEUESTATE, "buildbarn.buildqueuestate.SizeClassQueueName", 2, "size_class", "uint32", False, None),
    (BUILDQUEUESTATE, "buildbarn.buildqueuestate.SizeClassQueueState", 1, "size_class", "uint32", False, None),
    (BUILDQUEUESTATE, "buildbarn.buildqueuestate.SizeClassQueueState", 2, "timeout", "google.protobuf.Timestamp", False, None),
    (BUILDQUEUESTATE, "buildbarn.buildqueuestate.SizeClassQueueState", 5, "workers_count", "uint32", False, None),
    (BUILDQUEUESTATE, "buildbarn.buildqueuestate.SizeClassQueueState", 7, "drains_count", "uint32", False, None),
    (BUILDQUEUESTATE, "buildbarn.buildqueuestate.SizeClassQueueState", 9, "root_invocation", "buildbarn.buildqueuestate.InvocationState", False, None),
    (BUILDQUEUESTATE, "buildbarn.buildqueuestate.TerminateWorkersRequest", 1, "worker_id_pattern", "buildbarn.buildqueuestate.TerminateWorkersRequest.WorkerIdPatternEntry", True,  None),
    (BUILDQUEUESTATE, "buildbarn.buildqueuestate.TerminateWorkersRequest.WorkerIdPatternEntry", 1, "key", "string", False, None),
    (BUILDQUEUESTATE, "buildbarn.buildqueuestate.TerminateWorkersRequest.WorkerIdPatternEntry", 2, "value", "string", False, None),
    (BUILDQUEUESTATE, "buildbarn.buildqueuestate.WorkerState", 1, "id", "buildbarn.buildqueuestate.WorkerState.IdEntry", True,  None),
    (BUILDQUEUESTATE, "buildbarn.buildqueuestate.WorkerState", 2, "timeout", "google.protobuf.Timestamp", False, None),
    (BUILDQUEUESTATE, "buildbarn.buildqueuestate.WorkerState", 3, "current_operation", "buildbarn.buildqueuestate.OperationState", False, None),
    (BUILDQUEUESTATE, "buildbarn.buildqueuestate.WorkerState", 4, "drained", "bool", False, None),
    (BUILDQUEUESTATE, "buildbarn.buildqueuestate.WorkerState.IdEntry", 1, "key", "string", False, None),
    (BUILDQUEUESTATE, "buildbarn.buildqueuestate.WorkerState.IdEntry", 2, "value", "string", False, None),
    (RESOURCEUSAGE, "buildbarn.resourceusage.FilePoolResourceUsage", 1, "files_created", "uint64", False, None),
    (RESOURCEUSAGE, "buildbarn.resourceusage.FilePoolResourceUsage", 2, "files_count_peak", "uint64", False, None),
    (RESOURCEUSAGE, "buildbarn.resourceusage.FilePoolResourceUsage", 3, "files_size_bytes_peak", "uint64", False, None),
    (RESOURCEUSAGE, "buildbarn.resourceusage.FilePoolResourceUsage", 4, "reads_count", "uint64", False, None),
    (RESOURCEUSAGE, "buildbarn.resourceusage.FilePoolResourceUsage", 5, "reads_size_bytes", "uint64", False, None),
    (RESOURCEUSAGE, "buildbarn.resourceusage.FilePoolResourceUsage", 6, "writes_count", "uint64", False, None),
    (RESOURCEUSAGE, "buildbarn.resourceusage.FilePoolResourceUsage", 7, "writes_size_bytes", "uint64", False, None),
    (RESOURCEUSAGE, "buildbarn.resourceusage.FilePoolResourceUsage", 8, "truncates_count", "uint64", False, None),
    (RESOURCEUSAGE, "buildbarn.resourceusage.InputRootResourceUsage", 1, "directories_resolved", "uint64", False, None),
    (RESOURCEUSAGE, "buildbarn.resourceusage.InputRootResourceUsage", 2, "directories_read", "uint64", False, None),
    (RESOURCEUSAGE, "buildbarn.resourceusage.InputRootResourceUsage", 3, "files_read", "uint64", False, None),
    (RESOURCEUSAGE, "buildbarn.resourceusage.MonetaryResourceUsage", 1, "expenses", "buildbarn.resourceusage.MonetaryResourceUsage.ExpensesEntry", True,  None),
    (RESOURCEUSAGE, "buildbarn.resourceusage.MonetaryResourceUsage.Expense", 1, "currency", "string", False, None),
    (RESOURCEUSAGE, "buildbarn.resourceusage.MonetaryResourceUsage.Expense", 2, "cost", "double", False, None),
    (RESOURCEUSAGE, "buildbarn.resourceusage.MonetaryResourceUsage.ExpensesEntry", 1, "key", "string", False, None),
    (RESOURCEUSAGE, "buildbarn.resourceusage.MonetaryResourceUsage.ExpensesEntry", 2, "value", "buildbarn.resourceusage.MonetaryResourceUsage.Expense", False, None),
    (RESOURCEUSAGE, "buildbarn.resourceusage.POSIXResourceUsage", 1, "user_time", "google.protobuf.Duration", False, None),
    (RESOURCEUSAGE, "buildbarn.resourceusage.POSIXResourceUsage", 2, "system_time", "google.protobuf.Duration", False, None),
    (RESOURCEUSAGE, "buildbarn.resourceusage.POSIXResourceUsage", 3, "maximum_resident_set_size", "int64", False, None),
    (RESOURCEUSAGE, "buildbarn.resourceusage.POSIXResourceUsage", 7, "page_reclaims", "int64", False, None),
    (RESOURCEUSAGE, "buildbarn.resourceusage.POSIXResourceUsage", 8, "page_faults", "int64", False, None),
    (RESOURCEUSAGE, "buildbarn.resourceusage.POSIXResourceUsage", 9, "swaps", "int64", False, None),
    (RESOURCEUSAGE, "buildbarn.resourceusage.POSIXResourceUsage", 10, "block_input_operations", "int64", False, None),
    (RESOURCEUSAGE, "buildbarn.resourceusage.POSIXResourceUsage", 11, "block_output_operations", "int64", False, None),
    (RESOURCEUSAGE, "buildbarn.resourceusage.POSIXResourceUsage", 12, "messages_sent", "int64", False, None),
    (RESOURCEUSAGE, "buildbarn.resourceusage.POSIXResourceUsage", 13, "messages_received", "int64", False, None),
    (RESOURCEUSAGE, "buildbarn.resourceusage.POSIXResourceUsage", 14, "signals_received", "int64", False, None),
    (RESOURCEUSAGE, "buildbarn.resourceusage.POSIXResourceUsage", 15, "voluntary_context_switches", "int64", False, None),
    (RESOURCEUSAGE, "buildbarn.resourceusage.POSIXResourceUsage", 16, "involuntary_context_switches", "int64", False, None),
    (RESOURCEUSAGE, "buildbarn.resourceusage.POSIXResourceUsage", 17, "termination_signal", "string", False, None),
    (BYTESTREAM, "google.bytestream.QueryWriteStatusRequest", 1, "resource_name", "string", False, None),
    (BYTESTREAM, "google.bytestream.QueryWriteStatusResponse", 1, "committed_size", "int64", False, None),
    (BYTESTREAM, "google.bytestream.QueryWriteStatusResponse", 2, "complete", "bool", False, None),
    (BYTESTREAM, "google.bytestream.ReadRequest", 1, "resource_name", "string", False, None),
    (BYTESTREAM, "google.bytestream.ReadRequest", 2, "read_offset", "int64", False, None),
    (BYTESTREAM, "google.bytestream.ReadRequest", 3, "read_limit", "int64", False, None),
    (BYTESTREAM, "google.bytestream.ReadResponse", 10, "data", "bytes", False, None),
    (BYTESTREAM, "google.bytestream.WriteRequest", 1, "resource_name", "string", False, None),
    (BYTESTREAM, "google.bytestream.WriteRequest", 2, "write_offset", "int64", False, None),
    (BYTESTREAM, "google.bytestream.WriteRequest", 3, "finish_write", "bool", False, None),
    (BYTESTREAM, "google.bytestream.WriteRequest", 10, "data", "bytes", False, None),
    (BYTESTREAM, "google.bytestream.WriteResponse", 1, "committed_size", "int64", False, None),
    (SCHEDULER, "buildbarn.configuration.scheduler.ActionRouterConfiguration", 1, "simple", "buildbarn.configuration.scheduler.SimpleActionRouterConfiguration", False, 'kind'),
    (SCHEDULER, "buildbarn.configuration.scheduler.ActionRouterConfiguration", 2, "demultiplexing", "buildbarn.configuration.scheduler.DemultiplexingActionRouterConfiguration", False, 'kind'),
    (SCHEDULER, "buildbarn.configuration.scheduler.SimpleActionRouterConfiguration", 1, "platform_key_extractor", "buildbarn.configuration.scheduler.PlatformKeyExtractorConfiguration", False, None),
    (SCHEDULER, "buildbarn.configuration.scheduler.SimpleActionRouterConfiguration", 2, "invocation_key_extractors", "buildbarn.configuration.scheduler.InvocationKeyExtractorConfiguration", True, None),
    (SCHEDULER, "buildbarn.configuration.scheduler.SimpleActionRouterConfiguration", 3, "initial_size_class_analyzer", "buildbarn.configuration.scheduler.InitialSizeClassAnalyzerConfiguration", False, None),
    (SCHEDULER, "buildbarn.configuration.scheduler.DemultiplexingActionRouterConfiguration", 1, "platform_key_extractor", "buildbarn.configuration.scheduler.PlatformKeyExtractorConfiguration", False, None),
    (SCHEDULER, "buildbarn.configuration.scheduler.DemultiplexingActionRouterConfiguration", 2, "backends", "buildbarn.configuration.scheduler.DemultiplexingActionRouterConfiguration.Backend", True, None),
    (SCHEDULER, "buildbarn.configuration.scheduler.DemultiplexingActionRouterConfiguration", 3, "default_action_router", "buildbarn.configuration.scheduler.ActionRouterConfiguration", False, None),
    (SCHEDULER, "buildbarn.configuration.scheduler.DemultiplexingActionRouterConfiguration.Backend", 1, "instance_name_prefix", "string", False, None),
    (SCHEDULER, "buildbarn.configuration.scheduler.DemultiplexingActionRouterConfiguration.Backend", 2, "platform", "build.bazel.remote.execution.v2.Platform", False, None),
    (SCHEDULER, "buildbarn.configuration.scheduler.DemultiplexingActionRouterConfiguration.Backend", 3, "action_router", "buildbarn.configuration.scheduler.ActionRouterConfiguration", False, None),
    (SCHEDULER, "buildbarn.configuration.scheduler.PlatformKeyExtractorConfiguration", 1, "action", "google.protobuf.Empty", False, 'kind'),
    (SCHEDULER, "buildbarn.configuration.scheduler.PlatformKeyExtractorConfiguration", 2, "action_and_command", "google.protobuf.Empty", False, 'kind'),
    (SCHEDULER, "buildbarn.configuration.scheduler.PlatformKeyExtractorConfiguration", 3, "static", "build.bazel.remote.execution.v2.Platform", False, 'kind'),
    (SCHEDULER, "buildbarn.configuration.scheduler.InvocationKeyExtractorConfiguration", 2, "tool_invocation_id", "google.protobuf.Empty", False, 'kind'),
    (SCHEDULER, "buildbarn.configuration.scheduler.InvocationKeyExtractorConfiguration", 3, "correlated_invocations_id", "google.protobuf.Empty", False, 'kind'),
    (SCHEDULER, "buildbarn.configuration.scheduler.InvocationKeyExtractorConfiguration", 4, "authentication_metadata", "google.protobuf.Empty", False, 'kind'),
    (SCHEDULER, "buildbarn.configuration.scheduler.InitialSizeClassAnalyzerConfiguration", 1, "default_execution_timeout", "google.protobuf.Duration", False, None),
    (SCHEDULER, "buildbarn.configuration.scheduler.InitialSizeClassAnalyzerConfiguration", 2, "maximum_execution_timeout", "google.protobuf.Duration", False, None),
    (SCHEDULER, "buildbarn.configuration.scheduler.InitialSizeClassAnalyzerConfiguration", 3, "feedback_driven", "buildbarn.configuration.scheduler.InitialSizeClassFeedbackDrivenAnalyzerConfiguration", False, None),
    (SCHEDULER, "buildbarn.configuration.scheduler.InitialSizeClassFeedbackDrivenAnalyzerConfiguration", 1, "failure_cache_duration", "google.protobuf.Duration", False, None),
    (SCHEDULER, "buildbarn.configuration.scheduler.InitialSizeClassFeedbackDrivenAnalyzerConfiguration", 6, "history_size", "int32", False, None),
    (SCHEDULER, "buildbarn.configuration.scheduler.InitialSizeClassFeedbackDrivenAnalyzerConfiguration", 7, "page_rank", "buildbarn.configuration.scheduler.InitialSizeClassPageRankStrategyCalculatorConfiguration", False, None),
    (SCHEDULER, "buildbarn.configuration.scheduler.InitialSizeClassPageRankStrategyCalculatorConfiguration", 1, "acceptable_execution_time_increase_exponent", "double", False, None),
    (SCHEDULER, "buildbarn.configuration.scheduler.InitialSizeClassPageRankStrategyCalculatorConfiguration", 2, "smaller_size_class_execution_timeout_multiplier", "double", False, None),
    (SCHEDULER, "buildbarn.configuration.scheduler.InitialSizeClassPageRankStrategyCalculatorConfiguration", 3, "minimum_execution_timeout", "google.protobuf.Duration", False, None),
    (SCHEDULER, "buildbarn.configuration.scheduler.InitialSizeClassPageRankStrategyCalculatorConfiguration", 4, "maximum_convergence_error", "double", False, None),
]

# Messages upstream declares with no fields (enum holders and markers).
EMPTY_MESSAGES: list[tuple[str, str]] = [
    (REAPI, "build.bazel.remote.execution.v2.ChunkingFunction"),
    (REAPI, "build.bazel.remote.execution.v2.Compressor"),
    (REAPI, "build.bazel.remote.execution.v2.DigestFunction"),
    (REAPI, "build.bazel.remote.execution.v2.ExecutionStage"),
    (REAPI, "build.bazel.remote.execution.v2.SymlinkAbsolutePathStrategy"),
    (BUILDQUEUESTATE, "buildbarn.buildqueuestate.BackgroundLearning"),
]

# (upstream file, enum, value name, number)
ENUM_VALUES: list[tuple[str, str, str, int]] = [
    (REAPI, "build.bazel.remote.execution.v2.ChunkingFunction.Value", "UNKNOWN", 0),
    (REAPI, "build.bazel.remote.execution.v2.ChunkingFunction.Value", "FAST_CDC_2020", 1),
    (REAPI, "build.bazel.remote.execution.v2.ChunkingFunction.Value", "REP_MAX_CDC", 2),
    (REAPI, "build.bazel.remote.execution.v2.Command.OutputDirectoryFormat", "TREE_ONLY", 0),
    (REAPI, "build.bazel.remote.execution.v2.Command.OutputDirectoryFormat", "DIRECTORY_ONLY", 1),
    (REAPI, "build.bazel.remote.execution.v2.Command.OutputDirectoryFormat", "TREE_AND_DIRECTORY", 2),
    (REAPI, "build.bazel.remote.execution.v2.Compressor.Value", "IDENTITY", 0),
    (REAPI, "build.bazel.remote.execution.v2.Compressor.Value", "ZSTD", 1),
    (REAPI, "build.bazel.remote.execution.v2.Compressor.Value", "DEFLATE", 2),
    (REAPI, "build.bazel.remote.execution.v2.Compressor.Value", "BROTLI", 3),
    (REAPI, "build.bazel.remote.execution.v2.DigestFunction.Value", "UNKNOWN", 0),
    (REAPI, "build.bazel.remote.execution.v2.DigestFunction.Value", "SHA256", 1),
    (REAPI, "build.bazel.remote.execution.v2.DigestFunction.Value", "SHA1", 2),
    (REAPI, "build.bazel.remote.execution.v2.DigestFunction.Value", "MD5", 3),
    (REAPI, "build.bazel.remote.execution.v2.DigestFunction.Value", "VSO", 4),
    (REAPI, "build.bazel.remote.execution.v2.DigestFunction.Value", "SHA384", 5),
    (REAPI, "build.bazel.remote.execution.v2.DigestFunction.Value", "SHA512", 6),
    (REAPI, "build.bazel.remote.execution.v2.DigestFunction.Value", "MURMUR3", 7),
    (REAPI, "build.bazel.remote.execution.v2.DigestFunction.Value", "SHA256TREE", 8),
    (REAPI, "build.bazel.remote.execution.v2.DigestFunction.Value", "BLAKE3", 9),
    (REAPI, "build.bazel.remote.execution.v2.DigestFunction.Value", "GITSHA1", 10),
    (REAPI, "build.bazel.remote.execution.v2.ExecutionStage.Value", "UNKNOWN", 0),
    (REAPI, "build.bazel.remote.execution.v2.ExecutionStage.Value", "CACHE_CHECK", 1),
    (REAPI, "build.bazel.remote.execution.v2.ExecutionStage.Value", "QUEUED", 2),
    (REAPI, "build.bazel.remote.execution.v2.ExecutionStage.Value", "EXECUTING", 3),
    (REAPI, "build.bazel.remote.execution.v2.ExecutionStage.Value", "COMPLETED", 4),
    (REAPI, "build.bazel.remote.execution.v2.SymlinkAbsolutePathStrategy.Value", "UNKNOWN", 0),
    (REAPI, "build.bazel.remote.execution.v2.SymlinkAbsolutePathStrategy.Value", "DISALLOWED", 1),
    (REAPI, "build.bazel.remote.execution.v2.SymlinkAbsolutePathStrategy.Value", "ALLOWED", 2),
    (BUILDQUEUESTATE, "buildbarn.buildqueuestate.ListInvocationChildrenRequest.Filter", "ALL", 0),
    (BUILDQUEUESTATE, "buildbarn.buildqueuestate.ListInvocationChildrenRequest.Filter", "ACTIVE", 1),
    (BUILDQUEUESTATE, "buildbarn.buildqueuestate.ListInvocationChildrenRequest.Filter", "QUEUED", 2),
]

# (upstream file, service, method, request, response, client streaming, server streaming)
METHODS: list[tuple[str, str, str, str, str, bool, bool]] = [
    (REAPI, "build.bazel.remote.execution.v2.ActionCache", "GetActionResult", "build.bazel.remote.execution.v2.GetActionResultRequest", "build.bazel.remote.execution.v2.ActionResult", False, False),
    (REAPI, "build.bazel.remote.execution.v2.ActionCache", "UpdateActionResult", "build.bazel.remote.execution.v2.UpdateActionResultRequest", "build.bazel.remote.execution.v2.ActionResult", False, False),
    (REAPI, "build.bazel.remote.execution.v2.Capabilities", "GetCapabilities", "build.bazel.remote.execution.v2.GetCapabilitiesRequest", "build.bazel.remote.execution.v2.ServerCapabilities", False, False),
    (REAPI, "build.bazel.remote.execution.v2.ContentAddressableStorage", "BatchReadBlobs", "build.bazel.remote.execution.v2.BatchReadBlobsRequest", "build.bazel.remote.execution.v2.BatchReadBlobsResponse", False, False),
    (REAPI, "build.bazel.remote.execution.v2.ContentAddressableStorage", "BatchUpdateBlobs", "build.bazel.remote.execution.v2.BatchUpdateBlobsRequest", "build.bazel.remote.execution.v2.BatchUpdateBlobsResponse", False, False),
    (REAPI, "build.bazel.remote.execution.v2.ContentAddressableStorage", "FindMissingBlobs", "build.bazel.remote.execution.v2.FindMissingBlobsRequest", "build.bazel.remote.execution.v2.FindMissingBlobsResponse", False, False),
    (REAPI, "build.bazel.remote.execution.v2.ContentAddressableStorage", "GetTree", "build.bazel.remote.execution.v2.GetTreeRequest", "build.bazel.remote.execution.v2.GetTreeResponse", False, True),
    (REAPI, "build.bazel.remote.execution.v2.ContentAddressableStorage", "SpliceBlob", "build.bazel.remote.execution.v2.SpliceBlobRequest", "build.bazel.remote.execution.v2.SpliceBlobResponse", False, False),
    (REAPI, "build.bazel.remote.execution.v2.ContentAddressableStorage", "SplitBlob", "build.bazel.remote.execution.v2.SplitBlobRequest", "build.bazel.remote.execution.v2.SplitBlobResponse", False, False),
    (REAPI, "build.bazel.remote.execution.v2.Execution", "Execute", "build.bazel.remote.execution.v2.ExecuteRequest", "google.longrunning.Operation", False, True),
    (REAPI, "build.bazel.remote.execution.v2.Execution", "WaitExecution", "build.bazel.remote.execution.v2.WaitExecutionRequest", "google.longrunning.Operation", False, True),
    (REMOTEWORKER, "buildbarn.remoteworker.OperationQueue", "Synchronize", "buildbarn.remoteworker.SynchronizeRequest", "buildbarn.remoteworker.SynchronizeResponse", False, False),
    (BUILDQUEUESTATE, "buildbarn.buildqueuestate.BuildQueueState", "AddDrain", "buildbarn.buildqueuestate.AddOrRemoveDrainRequest", "google.protobuf.Empty", False, False),
    (BUILDQUEUESTATE, "buildbarn.buildqueuestate.BuildQueueState", "GetOperation", "buildbarn.buildqueuestate.GetOperationRequest", "buildbarn.buildqueuestate.GetOperationResponse", False, False),
    (BUILDQUEUESTATE, "buildbarn.buildqueuestate.BuildQueueState", "KillOperations", "buildbarn.buildqueuestate.KillOperationsRequest", "google.protobuf.Empty", False, False),
    (BUILDQUEUESTATE, "buildbarn.buildqueuestate.BuildQueueState", "ListDrains", "buildbarn.buildqueuestate.ListDrainsRequest", "buildbarn.buildqueuestate.ListDrainsResponse", False, False),
    (BUILDQUEUESTATE, "buildbarn.buildqueuestate.BuildQueueState", "ListInvocationChildren", "buildbarn.buildqueuestate.ListInvocationChildrenRequest", "buildbarn.buildqueuestate.ListInvocationChildrenResponse", False, False),
    (BUILDQUEUESTATE, "buildbarn.buildqueuestate.BuildQueueState", "ListOperations", "buildbarn.buildqueuestate.ListOperationsRequest", "buildbarn.buildqueuestate.ListOperationsResponse", False, False),
    (BUILDQUEUESTATE, "buildbarn.buildqueuestate.BuildQueueState", "ListPlatformQueues", "google.protobuf.Empty", "buildbarn.buildqueuestate.ListPlatformQueuesResponse", False, False),
    (BUILDQUEUESTATE, "buildbarn.buildqueuestate.BuildQueueState", "ListQueuedOperations", "buildbarn.buildqueuestate.ListQueuedOperationsRequest", "buildbarn.buildqueuestate.ListQueuedOperationsResponse", False, False),
    (BUILDQUEUESTATE, "buildbarn.buildqueuestate.BuildQueueState", "ListWorkers", "buildbarn.buildqueuestate.ListWorkersRequest", "buildbarn.buildqueuestate.ListWorkersResponse", False, False),
    (BUILDQUEUESTATE, "buildbarn.buildqueuestate.BuildQueueState", "RemoveDrain", "buildbarn.buildqueuestate.AddOrRemoveDrainRequest", "google.protobuf.Empty", False, False),
    (BUILDQUEUESTATE, "buildbarn.buildqueuestate.BuildQueueState", "TerminateWorkers", "buildbarn.buildqueuestate.TerminateWorkersRequest", "google.protobuf.Empty", False, False),
    (BYTESTREAM, "google.bytestream.ByteStream", "QueryWriteStatus", "google.bytestream.QueryWriteStatusRequest", "google.bytestream.QueryWriteStatusResponse", False, False),
    (BYTESTREAM, "google.bytestream.ByteStream", "Read", "google.bytestream.ReadRequest", "google.bytestream.ReadResponse", False, True),
    (BYTESTREAM, "google.bytestream.ByteStream", "Write", "google.bytestream.WriteRequest", "google.bytestream.WriteResponse", True, False),
]

# Field numbers upstream marks `reserved` (retired fields), so that nobody
# reuses them. (upstream file, message, reserved numbers)
RESERVED: list[tuple[str, str, tuple[int, ...]]] = [
    (REAPI, "build.bazel.remote.execution.v2.Action", (3, 4, 5, 8)),
    (REAPI, "build.bazel.remote.execution.v2.ActionResult", (1,)),
    (REAPI, "build.bazel.remote.execution.v2.Directory", (4,)),
    (REAPI, "build.bazel.remote.execution.v2.ExecuteRequest", (2, 4, 5)),
    (REAPI, "build.bazel.remote.execution.v2.FileNode", (3, 5)),
    (REAPI, "build.bazel.remote.execution.v2.OutputDirectory", (2,)),
    (REAPI, "build.bazel.remote.execution.v2.OutputFile", (3, 6)),
    (REAPI, "build.bazel.remote.execution.v2.OutputSymlink", (3,)),
    (REAPI, "build.bazel.remote.execution.v2.SymlinkNode", (3,)),
    (REMOTEWORKER, "buildbarn.remoteworker.CurrentState.Executing", (7,)),
    (REMOTEWORKER, "buildbarn.remoteworker.DesiredState.Executing", (3, 5)),
    (BUILDQUEUESTATE, "buildbarn.buildqueuestate.InvocationState", (1, 3)),
    (BUILDQUEUESTATE, "buildbarn.buildqueuestate.ListQueuedOperationsRequest", (2,)),
    (BUILDQUEUESTATE, "buildbarn.buildqueuestate.OperationState", (3, 6)),
    (BUILDQUEUESTATE, "buildbarn.buildqueuestate.SizeClassQueueState", (3, 4, 6, 8)),
    (RESOURCEUSAGE, "buildbarn.resourceusage.POSIXResourceUsage", (4, 5, 6)),
    (SCHEDULER, "buildbarn.configuration.scheduler.InvocationKeyExtractorConfiguration", (1,)),
    (SCHEDULER, "buildbarn.configuration.scheduler.InitialSizeClassFeedbackDrivenAnalyzerConfiguration", (2, 3, 4, 5)),
]
# fmt: on

_F = descriptor.FieldDescriptor
SCALAR_TYPE_NAMES = {
    _F.TYPE_DOUBLE: "double",
    _F.TYPE_FLOAT: "float",
    _F.TYPE_INT64: "int64",
    _F.TYPE_UINT64: "uint64",
    _F.TYPE_INT32: "int32",
    _F.TYPE_FIXED64: "fixed64",
    _F.TYPE_FIXED32: "fixed32",
    _F.TYPE_BOOL: "bool",
    _F.TYPE_STRING: "string",
    _F.TYPE_BYTES: "bytes",
    _F.TYPE_UINT32: "uint32",
    _F.TYPE_SFIXED32: "sfixed32",
    _F.TYPE_SFIXED64: "sfixed64",
    _F.TYPE_SINT32: "sint32",
    _F.TYPE_SINT64: "sint64",
}

FieldFacts = tuple[str, str, bool, "str | None"]


def _expected_messages() -> dict[tuple[str, str], dict[int, FieldFacts]]:
    expected: dict[tuple[str, str], dict[int, FieldFacts]] = defaultdict(dict)
    for upstream_file, message, number, name, type_name, repeated, oneof in FIELDS:
        fields = expected[upstream_file, message]
        assert number not in fields, f"duplicate table row {message} #{number}"
        fields[number] = (name, type_name, repeated, oneof)
    for upstream_file, message in EMPTY_MESSAGES:
        expected[upstream_file, message] = {}
    return dict(expected)


EXPECTED_MESSAGES = _expected_messages()


def _group(rows: list[tuple], key_len: int) -> dict[tuple, list[tuple]]:
    grouped: dict[tuple, list[tuple]] = defaultdict(list)
    for row in rows:
        grouped[row[:key_len]].append(row[key_len:])
    return dict(grouped)


EXPECTED_ENUMS = {k: dict(v) for k, v in _group(ENUM_VALUES, 2).items()}
EXPECTED_SERVICES = {k: {m[0]: m[1:] for m in v} for k, v in _group(METHODS, 2).items()}


def _file(upstream_file: str) -> descriptor.FileDescriptor:
    return FILES[upstream_file][1].DESCRIPTOR


def _all_messages(file: descriptor.FileDescriptor) -> list[descriptor.Descriptor]:
    found: list[descriptor.Descriptor] = []
    pending = list(file.message_types_by_name.values())
    while pending:
        message = pending.pop()
        found.append(message)
        pending.extend(message.nested_types)
    return found


def _all_enums(file: descriptor.FileDescriptor) -> list[descriptor.EnumDescriptor]:
    enums = list(file.enum_types_by_name.values())
    for message in _all_messages(file):
        enums.extend(message.enum_types)
    return enums


def _field_facts(field: descriptor.FieldDescriptor) -> FieldFacts:
    if field.type == _F.TYPE_MESSAGE:
        type_name = field.message_type.full_name
    elif field.type == _F.TYPE_ENUM:
        type_name = field.enum_type.full_name
    else:
        type_name = SCALAR_TYPE_NAMES[field.type]
    oneof = field.containing_oneof.name if field.containing_oneof else None
    return (field.name, type_name, field.is_repeated, oneof)


def _find_message(upstream_file: str, full_name: str) -> descriptor.Descriptor:
    file = _file(upstream_file)
    message = file.pool.FindMessageTypeByName(full_name)
    assert message.file is file, f"{full_name} is defined in {message.file.name}"
    return message


@pytest.mark.parametrize("upstream_file", sorted(FILES))
def test_package(upstream_file: str) -> None:
    package, module = FILES[upstream_file]
    assert module.DESCRIPTOR.package == package
    proto = descriptor_pb2.FileDescriptorProto()
    module.DESCRIPTOR.CopyToProto(proto)
    assert proto.syntax == "proto3"


@pytest.mark.parametrize(
    ("upstream_file", "message"),
    sorted(EXPECTED_MESSAGES),
    ids=[message for _, message in sorted(EXPECTED_MESSAGES)],
)
def test_message_fields(upstream_file: str, message: str) -> None:
    ours = {f.number: _field_facts(f) for f in _find_message(upstream_file, message).fields}
    assert ours == EXPECTED_MESSAGES[upstream_file, message]


@pytest.mark.parametrize("upstream_file", sorted(FILES))
def test_no_messages_beyond_upstream(upstream_file: str) -> None:
    ours = {m.full_name for m in _all_messages(_file(upstream_file))}
    upstream = {message for f, message in EXPECTED_MESSAGES if f == upstream_file}
    assert ours == upstream


@pytest.mark.parametrize(
    ("upstream_file", "enum"),
    sorted(EXPECTED_ENUMS),
    ids=[enum for _, enum in sorted(EXPECTED_ENUMS)],
)
def test_enum_values(upstream_file: str, enum: str) -> None:
    found = _file(upstream_file).pool.FindEnumTypeByName(enum)
    assert found.file is _file(upstream_file)
    assert {v.name: v.number for v in found.values} == EXPECTED_ENUMS[upstream_file, enum]


@pytest.mark.parametrize("upstream_file", sorted(FILES))
def test_no_enums_beyond_upstream(upstream_file: str) -> None:
    ours = {e.full_name for e in _all_enums(_file(upstream_file))}
    upstream = {enum for f, enum in EXPECTED_ENUMS if f == upstream_file}
    assert ours == upstream


@pytest.mark.parametrize(
    ("upstream_file", "service"),
    sorted(EXPECTED_SERVICES),
    ids=[service for _, service in sorted(EXPECTED_SERVICES)],
)
def test_service_methods(upstream_file: str, service: str) -> None:
    found = _file(upstream_file).pool.FindServiceByName(service)
    assert found.file is _file(upstream_file)
    ours = {
        m.name: (
            m.input_type.full_name,
            m.output_type.full_name,
            m.client_streaming,
            m.server_streaming,
        )
        for m in found.methods
    }
    assert ours == EXPECTED_SERVICES[upstream_file, service]


@pytest.mark.parametrize("upstream_file", sorted(FILES))
def test_no_services_beyond_upstream(upstream_file: str) -> None:
    ours = {s.full_name for s in _file(upstream_file).services_by_name.values()}
    upstream = {service for f, service in EXPECTED_SERVICES if f == upstream_file}
    assert ours == upstream


@pytest.mark.parametrize(
    ("upstream_file", "message", "numbers"),
    RESERVED,
    ids=[message for _, message, _ in RESERVED],
)
def test_reserved_numbers(upstream_file: str, message: str, numbers: tuple[int, ...]) -> None:
    proto = descriptor_pb2.DescriptorProto()
    _find_message(upstream_file, message).CopyToProto(proto)
    ours = tuple(n for r in proto.reserved_range for n in range(r.start, r.end))
    assert tuple(sorted(ours)) == numbers


def test_grpc_method_paths() -> None:
    """Clients dial these exact paths; the package and service names make them."""
    paths = {
        f"/{service}/{method}"
        for _, service, method, *_ in METHODS
        if service.startswith("buildbarn.")
    }
    assert "/buildbarn.remoteworker.OperationQueue/Synchronize" in paths
    assert "/buildbarn.buildqueuestate.BuildQueueState/ListPlatformQueues" in paths
