"""GetTree over any blob store: breadth-first, deduplicated, paginated statelessly.

The page token is the breadth-first index of the next directory to return
(decimal). A tree is content-addressed, so the order is the same on every
frontend and every call: a request with a token re-walks the levels above it (one
pipelined read per level) rather than keeping state anywhere; one GetTree stream
returns that page and every later one, each with its next token. Directories missing
from the CAS are left out with their subtrees, as REAPI allows; a missing root is
NOT_FOUND.

A level is read in slices of at most `MAX_READ_BYTES` declared bytes (a single bigger
directory alone), so a wide level of large blobs is never held at once.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Protocol

from google.protobuf.message import DecodeError

from redbarn.digests import Digest, parse_digest
from redbarn.errors import InvalidArgument, NotFound
from redbarn.proto import remote_execution_pb2 as re_pb2

DEFAULT_PAGE_SIZE = 1000
MAX_PAGE_SIZE = 10000
MAX_PAGE_BYTES = 2 << 20  # stays far below the gRPC message limit
MAX_READ_BYTES = 4 << 20  # declared bytes per get_many while walking a level


class _Reader(Protocol):
    async def get_many(
        self, instance_name: str, digests: Sequence[Digest]
    ) -> list[bytes | None]: ...


def slices(digests: Sequence[Digest], max_bytes: int) -> list[list[Digest]]:
    """`digests` in order, cut where the declared sizes would pass `max_bytes`."""
    out: list[list[Digest]] = []
    total = 0
    for d in digests:
        if not out or (out[-1] and total + d.size_bytes > max_bytes):
            out.append([])
            total = 0
        out[-1].append(d)
        total += d.size_bytes
    return out


async def read_level(
    store: _Reader, instance_name: str, level: Sequence[Digest]
) -> AsyncIterator[tuple[Digest, bytes | None]]:
    """(digest, blob or None) for each of `level`, read `MAX_READ_BYTES` at a time."""
    for part in slices(level, MAX_READ_BYTES):
        for pair in zip(part, await store.get_many(instance_name, part), strict=True):
            yield pair


def _parse_token(page_token: str) -> int:
    if not page_token:
        return 0
    if not page_token.isdigit():
        raise InvalidArgument(f'Invalid page token "{page_token}"')
    return int(page_token)


def parse_directory(digest: Digest, data: bytes) -> re_pb2.Directory:
    try:
        return re_pb2.Directory.FromString(data)
    except DecodeError as err:
        raise InvalidArgument(f"Failed to unmarshal directory {digest}: {err}") from None


async def iter_tree_pages(
    store: _Reader, instance_name: str, root: Digest, page_size: int, page_token: str
) -> AsyncIterator[tuple[list[re_pb2.Directory], str]]:
    """Yield (directories, next_page_token) from `page_token` to the end of the tree.

    Pages before the token are walked (not returned) once; later pages continue
    the same walk. The last page has an empty token.
    """
    offset = _parse_token(page_token)
    if page_size < 0:
        raise InvalidArgument(f"Invalid page size {page_size}")
    limit = min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
    page: list[re_pb2.Directory] = []
    page_bytes, index = 0, 0
    seen, level = {root}, [root]
    while level:
        next_level: list[Digest] = []
        async for digest, data in read_level(store, instance_name, level):
            if data is None:
                if digest == root:
                    raise NotFound(f"Blob {root} not found")
                continue
            directory = parse_directory(digest, data)
            if index >= offset:
                if len(page) >= limit or (page and page_bytes + len(data) > MAX_PAGE_BYTES):
                    yield page, str(index)
                    page, page_bytes = [], 0
                page.append(directory)
                page_bytes += len(data)
            index += 1
            for child in directory.directories:
                child_digest = parse_digest(child.digest)
                if child_digest not in seen:
                    seen.add(child_digest)
                    next_level.append(child_digest)
        level = next_level
    yield page, ""
