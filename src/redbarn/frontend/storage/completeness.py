"""`CompletenessCheckingActionCache`: hide results whose outputs are gone from the CAS.

Bazel trusts a cached ActionResult and then fails the build if an output cannot be
downloaded. Buildbarn's `completenessChecking` action cache avoids that by
answering NOT_FOUND unless every blob the result references is present, so the
client re-executes instead. This decorator does the same over any
`ActionCacheStore` + `BlobStore` pair:

- output files, stdout and stderr digests;
- each output directory's Tree blob and every file inside it (and, for results
  stored as separate Directory blobs, `root_directory_digest` walked breadth first).

The FindMissingBlobs it issues also refreshes the TTL of every referenced blob. Every
digest it is about to look up is first checked against `max_blob_size` (INVALID_ARGUMENT
naming it): a stored result cannot make a GetActionResult work by the sizes it declares.
"""

from __future__ import annotations

from redbarn.digests import SHA256, Digest
from redbarn.digests import parse_digest as _parse_any
from redbarn.errors import InvalidArgument, NotFound
from redbarn.frontend.storage.base import ActionCacheStore, BlobStore
from redbarn.frontend.storage.tree import parse_directory
from redbarn.proto import remote_execution_pb2 as re_pb2

DEFAULT_MAX_TREE_BYTES = 64 << 20
DEFAULT_MAX_BLOB_SIZE = 1 << 30  # FrontendConfig.max_blob_size's default


def parse_digest(digest: re_pb2.Digest) -> Digest:
    """Digests inside a result use the request's function, which is SHA256 here."""
    return _parse_any(digest, SHA256)


def direct_digests(result: re_pb2.ActionResult) -> list[Digest]:
    """Digests an ActionResult names itself (not the contents of its trees)."""
    found = [parse_digest(f.digest) for f in result.output_files]
    for name in ("stdout_digest", "stderr_digest"):
        if result.HasField(name):
            found.append(parse_digest(getattr(result, name)))
    return found


def validate_action_result(result: re_pb2.ActionResult) -> None:
    """Raise InvalidArgument if any digest in `result` is malformed."""
    try:
        direct_digests(result)
        for d in result.output_directories:
            if d.HasField("tree_digest"):
                parse_digest(d.tree_digest)
            if d.HasField("root_directory_digest"):
                parse_digest(d.root_directory_digest)
    except InvalidArgument as err:
        raise InvalidArgument(f"Invalid action result: {err.message}") from None


def _tree_digests(result: re_pb2.ActionResult) -> list[Digest]:
    """The Tree and root Directory digests of a result's output directories."""
    return [
        parse_digest(getattr(d, name))
        for d in result.output_directories
        for name in ("tree_digest", "root_directory_digest")
        if d.HasField(name)
    ]


def _files_of(directory: re_pb2.Directory) -> list[Digest]:
    return [parse_digest(f.digest) for f in directory.files]


def check_sizes(what: str, digests: list[Digest], max_blob_size: int) -> None:
    """InvalidArgument naming the first of `digests` over `max_blob_size` bytes (in the
    wording of `frontend.bytestream.check_blob_size`, after `what`)."""
    for d in digests:
        if d.size_bytes > max_blob_size:
            raise InvalidArgument(
                f"{what}: Blob {d} is {d.size_bytes} bytes in size, while this server "
                f"accepts blobs of at most {max_blob_size} bytes"
            )


class CompletenessCheckingActionCache:
    """`ActionCacheStore` decorator: NOT_FOUND unless every referenced blob exists."""

    def __init__(
        self,
        base: ActionCacheStore,
        blobs: BlobStore,
        *,
        max_tree_bytes: int = DEFAULT_MAX_TREE_BYTES,
        max_blob_size: int = DEFAULT_MAX_BLOB_SIZE,
    ) -> None:
        self._base = base
        self._blobs = blobs
        self._max_tree_bytes = max_tree_bytes
        self._max_blob_size = max_blob_size

    async def get(self, instance_name: str, action_digest: Digest) -> re_pb2.ActionResult:
        result = await self._base.get(instance_name, action_digest)
        await self.check(instance_name, action_digest, result)
        return result

    async def put(
        self, instance_name: str, action_digest: Digest, result: re_pb2.ActionResult
    ) -> None:
        validate_action_result(result)
        check_sizes(
            "Invalid action result", [*direct_digests(result), *_tree_digests(result)],
            self._max_blob_size,
        )  # fmt: skip
        await self._base.put(instance_name, action_digest, result)

    async def check(
        self, instance_name: str, action_digest: Digest, result: re_pb2.ActionResult
    ) -> None:
        """Raise NotFound naming the first missing blob of `result` (InvalidArgument
        naming the first over the blob size limit)."""
        what = f"Action result for action {action_digest} is unusable"
        wanted = direct_digests(result)
        check_sizes(what, [*wanted, *_tree_digests(result)], self._max_blob_size)
        trees = [
            parse_digest(d.tree_digest)
            for d in result.output_directories
            if d.HasField("tree_digest")
        ]
        roots = [
            parse_digest(d.root_directory_digest)
            for d in result.output_directories
            if d.HasField("root_directory_digest")
        ]
        if sum(t.size_bytes for t in trees) > self._max_tree_bytes:
            raise NotFound(
                f"Action result for action {action_digest} has output trees larger than "
                f"{self._max_tree_bytes} bytes: not checked, treated as absent"
            )
        for tree_digest, data in zip(
            trees, await self._blobs.get_many(instance_name, trees), strict=True
        ):
            self._raise_missing(action_digest, [tree_digest] if data is None else [])
            assert data is not None
            tree = re_pb2.Tree.FromString(data)
            for directory in [tree.root, *tree.children]:
                wanted += _files_of(directory)
        wanted += await self._walk(instance_name, action_digest, roots)
        check_sizes(what, wanted, self._max_blob_size)
        self._raise_missing(action_digest, await self._blobs.find_missing(instance_name, wanted))

    async def _walk(
        self, instance_name: str, action_digest: Digest, roots: list[Digest]
    ) -> list[Digest]:
        """Files below Directory roots; NotFound if a directory blob is missing."""
        files: list[Digest] = []
        seen, level, total = set(roots), list(roots), 0
        while level:  # declared sizes are checked before a level is read
            if total + sum(d.size_bytes for d in level) > self._max_tree_bytes:
                raise NotFound(
                    f"Action result for action {action_digest} has output directories too large to check"
                )
            datas = await self._blobs.get_many(instance_name, level)
            self._raise_missing(
                action_digest, [d for d, b in zip(level, datas, strict=True) if b is None]
            )
            next_level: list[Digest] = []
            for digest, data in zip(level, datas, strict=True):
                assert data is not None
                total += len(data)
                directory = parse_directory(digest, data)
                files += _files_of(directory)
                for child in directory.directories:
                    cd = parse_digest(child.digest)
                    check_sizes(
                        f"Action result for action {action_digest} is unusable", [cd],
                        self._max_blob_size,
                    )  # fmt: skip
                    if cd not in seen:
                        seen.add(cd)
                        next_level.append(cd)
            level = next_level
        return files

    @staticmethod
    def _raise_missing(action_digest: Digest, missing: list[Digest]) -> None:
        if missing:
            raise NotFound(
                f"Action result for action {action_digest} references blob {missing[0]}, "
                "which is not present in the Content Addressable Storage"
            )
