"""Execute as a whole: read the Action, answer from the Action Cache, or enqueue it.

In Buildbarn's order: the Action is read from the CAS (FAILED_PRECONDITION naming it
when it is missing), its Command and input root must be present, a complete Action
Cache result answers at once unless `skip_cache_lookup` or `do_not_cache`, and anything
else is enqueued (`Operations.execute`). The storage is whatever the frontend serves
(Redis or a proxy), seen through two small roles; a store whose blobs live in the
scheduler's own Redis lets the enqueue script check the Command and input root in the
same round trip (`ActionBlobs.enqueue_check`), saving one per Execute.

Sizes are checked before anything is read: an Action or Command digest over
`max_action_size` (`--max-action-size`, 16 MiB by default, Buildbarn's message limit)
and an input root over `max_blob_size` are INVALID_ARGUMENT naming the digest and the
limit, so Execute never reads more than `max_action_size` bytes of Action.

The platform queue comes from the Action's platform; with Buildbarn's
`actionAndCommand` platform key extractor (the default here), an Action without one
takes its Command's (clients before REAPI 2.2, Bazel 2.x with exec properties, and
Bazel 4.2.3 put it only there): the Command is then read too, within the same limit.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from google.protobuf import any_pb2
from google.protobuf.message import DecodeError

from redbarn import digests, errors
from redbarn.digests import Digest
from redbarn.proto import remote_execution_pb2 as re_pb2
from redbarn.queue.operations import MissingBlobs, Operations, OperationView
from redbarn.queue.scripts import RequiredBlobs

_REQUEST_METADATA_URL = "type.googleapis.com/" + re_pb2.RequestMetadata.DESCRIPTOR.full_name
DEFAULT_MAX_ACTION_SIZE = 16 << 20  # FrontendConfig.max_action_size's default
DEFAULT_MAX_BLOB_SIZE = 1 << 30  # FrontendConfig.max_blob_size's default


class ActionBlobs(Protocol):
    """What Execute needs of the CAS (`redbarn.frontend.storage.BlobStore` has it)."""

    async def get(self, instance_name: str, digest: Digest) -> bytes:
        """One whole blob. Raises NotFound "Blob <hash>-<size> not found"."""

    async def find_missing(self, instance_name: str, digests: Sequence[Digest]) -> list[Digest]:
        """The subset of `digests` not stored."""

    def enqueue_check(self, redis: Any, digests: Sequence[Digest]) -> RequiredBlobs | None:
        """When these blobs live in `redis` itself (the same non-cluster server), the
        keys the enqueue script checks and refreshes; else None (checked beforehand
        with `find_missing`)."""


class ActionResults(Protocol):
    """What Execute needs of the Action Cache."""

    async def get(self, instance_name: str, action_digest: Digest) -> re_pb2.ActionResult:
        """Raises NotFound when there is no (usable) result."""


def missing_inputs(action: Digest, missing: Sequence[Digest]) -> errors.RedbarnError:
    names = ", ".join(str(d) for d in missing)
    return errors.FailedPrecondition(
        f"Failed to obtain inputs of action {action}: Blobs {names} not found",
        [d.subject for d in missing],
    )


def check_size(what: str, digest: Digest, limit: int, flag: str) -> None:
    """InvalidArgument naming `digest` and the limit when it declares more than `limit` bytes."""
    if digest.size_bytes > limit:
        raise errors.InvalidArgument(
            f"{what} {digest} is {digest.size_bytes} bytes in size, while this server accepts "
            f"at most {limit} bytes ({flag})"
        )


def cached_view(action_digest: Digest, result: re_pb2.ActionResult) -> OperationView:
    """A done operation for an Action Cache hit (`cached_result=true`)."""
    return OperationView(
        name=f"cached/{uuid.uuid4()}",
        stage=re_pb2.ExecutionStage.COMPLETED,
        action_digest=action_digest.to_proto(),
        digest_function=digests.SHA256,
        response=re_pb2.ExecuteResponse(result=result, cached_result=True),
        queued_ms=0,
        size_class=0,
        priority=0,
        invocation=(),
        worker="",
        gc_deadline_ms=None,
        now_ms=0,
    )


@dataclass
class Intake:
    """Execute over one CAS, one Action Cache and the scheduler's operations;
    `scheduler_redis` is the scheduler's client (see `ActionBlobs.enqueue_check`);
    `max_action_size` bounds the Action and Command, `max_blob_size` the input root."""

    operations: Operations
    blobs: ActionBlobs
    results: ActionResults
    scheduler_redis: Any
    max_action_size: int = DEFAULT_MAX_ACTION_SIZE
    max_blob_size: int = DEFAULT_MAX_BLOB_SIZE
    # Buildbarn's platform key extractor: "action" (the Action's platform only),
    # "actionAndCommand" (the Command's when the Action has none) or "static"
    # (`static_platform` for every request).
    platform_key_extractor: str = "actionAndCommand"
    static_platform: re_pb2.Platform | None = None
    # Platform properties left out of the queue key (--ignore-platform-property).
    ignored_properties: frozenset[str] = frozenset()

    async def execute(
        self,
        *,
        instance_name: str,
        action_digest: Digest,
        digest_function: int,
        skip_cache_lookup: bool = False,
        priority: int = 0,
        request_metadata: tuple[re_pb2.RequestMetadata, bytes] | None = None,
    ) -> OperationView:
        """The first view of the operation that runs (or ran) the action.

        `instance_name`, `action_digest` and `digest_function` are validated by the
        caller; `request_metadata` is the parsed header and its bytes as sent (workers
        get them as auxiliary metadata)."""
        action, needed, key = await self._read_action(instance_name, action_digest)
        if not skip_cache_lookup and not action.do_not_cache:
            try:
                result = await self.results.get(instance_name, action_digest)
            except errors.NotFound:
                pass
            else:
                self.operations.events.action_cache_hit(instance_name)
                return cached_view(action_digest, result)
        required = self.blobs.enqueue_check(self.scheduler_redis, needed)
        if required is None:
            missing = await self.blobs.find_missing(instance_name, needed)
            if missing:
                raise missing_inputs(action_digest, missing)
        elif not required.keys:
            required = None  # nothing stored to check (the empty blob, say)
        metadata, aux = None, []
        if request_metadata is not None:
            metadata = request_metadata[0]
            aux.append(any_pb2.Any(type_url=_REQUEST_METADATA_URL, value=request_metadata[1]))
        try:
            return await self.operations.execute(
                instance_name=instance_name,
                action_digest=action_digest.to_proto(),
                action=action,
                digest_function=digest_function,
                priority=priority,
                request_metadata=metadata,
                auxiliary_metadata=aux,
                required=required,
                queue_platform=key,
            )
        except MissingBlobs as err:
            assert required is not None
            gone = [required.blobs[i] for i in err.positions]
            raise missing_inputs(action_digest, gone) from None

    async def _read_action(
        self, instance_name: str, digest: Digest
    ) -> tuple[re_pb2.Action, list[Digest], re_pb2.Platform | None]:
        """The Action (for the worker), the digests of its Command and input root, each
        within its limit, and the platform that picks its queue when it is not the
        Action's own (the static extractor's, or with properties ignored)."""
        check_size("Failed to obtain action: Action", digest, self.max_action_size,
                   "--max-action-size")  # fmt: skip
        try:
            action = re_pb2.Action.FromString(await self.blobs.get(instance_name, digest))
        except errors.NotFound as err:
            raise errors.FailedPrecondition(
                f"Failed to obtain action: {err.message}", [digest.subject]
            ) from err
        except DecodeError as err:
            raise errors.InvalidArgument(
                f"Failed to obtain action: Action {digest} is not an Action: {err}"
            ) from err
        needed = [
            digests.parse_field(action, field)
            for field in ("command_digest", "input_root_digest")
            if action.HasField(field)
        ]
        if not action.HasField("command_digest"):
            raise errors.InvalidArgument(f"Action {digest} has no command digest")
        check_size(f"Invalid action {digest}: Command", needed[0], self.max_action_size,
                   "--max-action-size")  # fmt: skip
        if len(needed) > 1:
            check_size(f"Invalid action {digest}: input root", needed[1], self.max_blob_size,
                       "--max-blob-size")  # fmt: skip
        if self.platform_key_extractor == "actionAndCommand" and not action.platform.properties:
            command = await self._read_command(instance_name, digest, needed[0])
            if command.platform.properties:
                # The worker gets it in the Action too (as a REAPI 2.2 client sends it).
                action = re_pb2.Action.FromString(action.SerializeToString())
                action.platform.CopyFrom(command.platform)
        key = None
        if self.platform_key_extractor == "static" and self.static_platform is not None:
            key = self.static_platform  # the queue only: the worker gets the Action as sent
        if self.ignored_properties:
            source = action.platform if key is None else key
            if any(p.name in self.ignored_properties for p in source.properties):
                key = re_pb2.Platform(
                    properties=[
                        p for p in source.properties if p.name not in self.ignored_properties
                    ]
                )
        return action, needed, key

    async def _read_command(
        self, instance_name: str, action: Digest, digest: Digest
    ) -> re_pb2.Command:
        """The Command of `action` (already checked against max_action_size)."""
        try:
            return re_pb2.Command.FromString(await self.blobs.get(instance_name, digest))
        except errors.NotFound as err:
            raise missing_inputs(action, [digest]) from err
        except DecodeError as err:
            raise errors.InvalidArgument(
                f"Failed to obtain command: Command {digest} is not a Command: {err}"
            ) from err
