"""Inline small outputs into an ActionResult, as GetActionResult's `inline_*` fields ask.

REAPI lets the server skip inlining and requires it to when the reply would grow
too large: blobs are inlined in request order while they fit in `budget` bytes.
"""

from __future__ import annotations

from collections.abc import Sequence

from redbarn.digests import Digest, parse_digest
from redbarn.frontend.storage.base import BlobStore
from redbarn.proto import remote_execution_pb2 as re_pb2


async def inline_outputs(
    blobs: BlobStore,
    instance_name: str,
    result: re_pb2.ActionResult,
    *,
    stdout: bool,
    stderr: bool,
    output_files: Sequence[str],
    budget: int,
) -> None:
    """Fill `stdout_raw`, `stderr_raw` and `OutputFile.contents` in place, within `budget`."""
    wanted_paths = set(output_files)
    targets: list[tuple[Digest, re_pb2.ActionResult | re_pb2.OutputFile, str]] = []
    if stdout and result.HasField("stdout_digest") and not result.stdout_raw:
        targets.append((parse_digest(result.stdout_digest), result, "stdout_raw"))
    if stderr and result.HasField("stderr_digest") and not result.stderr_raw:
        targets.append((parse_digest(result.stderr_digest), result, "stderr_raw"))
    for f in result.output_files:
        if f.path in wanted_paths and not f.contents:
            targets.append((parse_digest(f.digest), f, "contents"))
    chosen = []
    for target in targets:
        if target[0].size_bytes <= budget:
            budget -= target[0].size_bytes
            chosen.append(target)
    datas = await blobs.get_many(instance_name, [t[0] for t in chosen])
    for (_, message, field), data in zip(chosen, datas, strict=True):
        if data is not None:
            setattr(message, field, data)
