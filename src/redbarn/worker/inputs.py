"""Input roots: fetch the Directory tree, validate it, hardlink it into a build directory.

`fetch_tree` reads the Directory messages level by level (one batch per level) and
refuses, with INVALID_ARGUMENT, anything that could make the worker write outside
the build directory: entry names that are empty, ".", ".." or contain "/" (or NUL),
duplicate names in one directory, and symlinks whose target leaves the input root
(absolute targets, or ".." past the root, following symlinks inside the tree).

`link_tree` runs in a thread as one tight loop of mkdir/link/symlink calls; symlinks
are created last, so no file is ever written through one.
"""

from __future__ import annotations

import errno
import os
import shutil
from collections import OrderedDict, deque
from dataclasses import dataclass, field

from redbarn import digests
from redbarn.errors import InvalidArgument
from redbarn.proto import remote_execution_pb2 as re_pb2
from redbarn.worker.cache import Want
from redbarn.worker.cas import CasClient, Scope

MAX_SYMLINK_HOPS = 40


@dataclass
class InputTree:
    """A validated input root, as lists of relative POSIX paths (parents first)."""

    directories: list[str] = field(default_factory=list)
    files: list[tuple[str, Want]] = field(default_factory=list)
    symlinks: list[tuple[str, str]] = field(default_factory=list)
    directories_read: int = 0


class DirectoryCache:
    """Parsed, validated Directory messages by digest, LRU-bounded by encoded size.

    Directories are immutable by digest, so a warm input root needs no CAS round trip."""

    def __init__(self, max_bytes: int = 64 << 20) -> None:
        self.max_bytes = max_bytes
        self._entries: OrderedDict[str, re_pb2.Directory] = OrderedDict()
        self._bytes = 0

    def get(self, key: str) -> re_pb2.Directory | None:
        msg = self._entries.get(key)
        if msg is not None:
            self._entries.move_to_end(key)
        return msg

    def put(self, key: str, size: int, msg: re_pb2.Directory) -> None:
        if key in self._entries or size > self.max_bytes:
            return
        self._entries[key] = msg
        self._bytes += size
        while self._bytes > self.max_bytes:
            old_key, _ = self._entries.popitem(last=False)
            self._bytes -= int(old_key.rpartition("-")[2])


def _shown(path: str) -> str:
    return path or "."


def check_name(directory: str, name: str) -> None:
    if name in ("", ".", "..") or "/" in name or "\0" in name:
        raise InvalidArgument(
            f'Invalid input root: directory "{_shown(directory)}" contains an entry named "{name}"'
        )


def _check_directory(path: str, msg: re_pb2.Directory) -> None:
    seen: set[str] = set()
    for entries in (msg.files, msg.directories, msg.symlinks):
        for e in entries:
            check_name(path, e.name)
            if e.name in seen:
                raise InvalidArgument(
                    f'Invalid input root: directory "{_shown(path)}" contains '
                    f'multiple entries named "{e.name}"'
                )
            seen.add(e.name)


def _join(parent: str, name: str) -> str:
    return f"{parent}/{name}" if parent else name


async def fetch_tree(
    cas: CasClient, scope: Scope, root: re_pb2.Digest, cache: DirectoryCache | None = None
) -> InputTree:
    """Fetch and validate the input root `root`; FAILED_PRECONDITION if blobs are missing."""
    tree = InputTree()
    parsed: dict[str, re_pb2.Directory] = {}
    frontier: list[tuple[str, re_pb2.Digest]] = [("", root)]
    prefix = f"{scope.digest_function}:"
    while frontier:
        need: dict[str, re_pb2.Digest] = {}
        for _, d in frontier:
            k = digests.key(d)
            if k in parsed or k in need:
                continue
            hit = cache.get(prefix + k) if cache is not None else None
            if hit is not None:
                parsed[k] = hit
            else:
                need[k] = d
        for d in need.values():
            digests.validate(d, scope.digest_function)
        small = [d for d in need.values() if d.size_bytes <= cas.batch_blob_limit]
        blobs = await cas.read_small(scope, small) if small else {}
        for d in need.values():
            if d.size_bytes > cas.batch_blob_limit:
                blobs[digests.key(d)] = await cas.read_blob(scope, d)
        tree.directories_read += len(need)
        for k, data in blobs.items():
            try:
                parsed[k] = re_pb2.Directory.FromString(data)
            except Exception as err:  # DecodeError
                raise InvalidArgument(f"Failed to parse directory {k}: {err}") from None
            if cache is not None:
                cache.put(prefix + k, len(data), parsed[k])
        following: list[tuple[str, re_pb2.Digest]] = []
        for path, d in frontier:
            msg = parsed[digests.key(d)]
            _check_directory(path, msg)
            if path:
                tree.directories.append(path)
            for f in msg.files:
                tree.files.append((_join(path, f.name), Want(f.digest, f.is_executable)))
            for s in msg.symlinks:
                tree.symlinks.append((_join(path, s.name), s.target))
            for sub in msg.directories:
                following.append((_join(path, sub.name), sub.digest))
        frontier = following
    for _path, want in tree.files:
        digests.validate(want.digest, scope.digest_function)
    check_symlinks(tree)
    return tree


def check_symlinks(tree: InputTree) -> None:
    """INVALID_ARGUMENT if any symlink, resolved inside the tree, leaves the input root."""
    if not tree.symlinks:
        return
    links = dict(tree.symlinks)
    for path, target in tree.symlinks:
        parent = path.rpartition("/")[0]
        if _escapes(links, parent, target):
            raise InvalidArgument(
                f'Invalid input root: symlink "{path}" has target "{target}", '
                "which escapes the input root"
            )


def _escapes(links: dict[str, str], parent: str, target: str) -> bool:
    if not target or target.startswith("/"):
        return True
    stack = [c for c in parent.split("/") if c]
    pending = deque(target.split("/"))
    hops = 0
    while pending:
        c = pending.popleft()
        if c in ("", "."):
            continue
        if c == "..":
            if not stack:
                return True
            stack.pop()
            continue
        stack.append(c)
        inner = links.get("/".join(stack))
        if inner is not None:
            hops += 1
            if hops > MAX_SYMLINK_HOPS or not inner or inner.startswith("/"):
                return True
            stack.pop()
            pending.extendleft(reversed(inner.split("/")))
    return False


def link_tree(tree: InputTree, root: str, sources: list[str]) -> None:
    """Create `tree` under the existing directory `root`, hardlinking files from `sources`
    (cache paths, in `tree.files` order). Falls back to copying across file systems."""
    mkdir, link, symlink = os.mkdir, os.link, os.symlink
    prefix = root + "/"
    for d in tree.directories:
        mkdir(prefix + d)
    copy = False
    for (rel, _want), src in zip(tree.files, sources, strict=True):
        dst = prefix + rel
        if not copy:
            try:
                link(src, dst)
                continue
            except OSError as err:
                if err.errno not in (errno.EXDEV, errno.EMLINK, errno.EPERM):
                    raise
                copy = err.errno == errno.EXDEV
        shutil.copy2(src, dst)
    for rel, target in tree.symlinks:
        symlink(target, prefix + rel)
