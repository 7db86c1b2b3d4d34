"""Input roots: fetch the Directory tree, bound and validate it, materialise it.

`fetch_tree` works in two steps, so that no input root is expanded before it is known
to be within the worker's limits (`InputLimits`):

1. Fetch every *distinct* Directory message once, level by level (one batch per
   level), under the input fetch deadline. A tree that lists the same child twice at
   every level is 31 blobs at depth 30, however many paths it stands for.
2. In a thread (so the event loop is never held), count what the tree expands to,
   bottom-up over distinct digests with memoisation: files (and symlinks),
   directories, depth and bytes. Over a limit is FAILED_PRECONDITION naming the
   limit and the count; only a tree within every limit is expanded into paths.

While expanding it refuses, with INVALID_ARGUMENT, anything that could make the
worker write outside the build directory: entry names that are empty, ".", ".." or
contain "/" (or NUL), duplicate names in one directory, and symlinks whose target
leaves the input root (absolute targets, or ".." past the root, following symlinks
inside the tree).

`link_tree` creates the tree in the build directory. Files are *copies* of the cache
entries (copy_file_range, which shares extents on file systems with reflinks), so an
action that makes its input writable and rewrites it changes its own copy only; with
`hardlink=True` (for workers whose actions run as another user, who cannot chmod a
file the worker owns) they are hardlinks. Symlinks are created last, so no file is
ever written through one.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import errno
import os
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from redbarn import digests
from redbarn.config import format_duration, format_size
from redbarn.errors import DeadlineExceeded, FailedPrecondition, InvalidArgument
from redbarn.proto import remote_execution_pb2 as re_pb2
from redbarn.worker.cache import LocalCache, Want
from redbarn.worker.cas import CasClient, Scope
from redbarn.worker.config import WorkerConfig

T = TypeVar("T")
MAX_SYMLINK_HOPS = 40
# Counts saturate here: a bomb's true size needs no more digits to be refused.
_CAP = 1 << 63
COPY_THREADS = 4
# Parse about this many bytes of Directory messages between event loop turns.
PARSE_SLICE = 256 << 10


@dataclass(frozen=True)
class InputLimits:
    """Bounds on an expanded input root (WorkerConfig's max_input_* and
    input_fetch_timeout). `directories` excludes the input root itself; `depth` is
    the nesting of the deepest directory (a root holding only files has depth 0)."""

    files: int = WorkerConfig.max_input_files
    directories: int = WorkerConfig.max_input_directories
    depth: int = WorkerConfig.max_input_depth
    bytes: int = WorkerConfig.max_input_bytes
    fetch_timeout: float = WorkerConfig.input_fetch_timeout

    @classmethod
    def of(cls, config: WorkerConfig) -> InputLimits:
        return cls(
            files=config.max_input_files,
            directories=config.max_input_directories,
            depth=config.max_input_depth,
            bytes=config.max_input_bytes,
            fetch_timeout=config.input_fetch_timeout,
        )


@dataclass
class InputTree:
    """A validated input root, as lists of relative POSIX paths (parents first)."""

    directories: list[str] = field(default_factory=list)
    files: list[tuple[str, Want]] = field(default_factory=list)
    symlinks: list[tuple[str, str]] = field(default_factory=list)
    directories_read: int = 0


@dataclass(frozen=True)
class TreeSize:
    """What a Directory expands to (counts saturate at 2**63)."""

    files: int  # files and symlinks
    directories: int  # below it, not counting itself
    depth: int
    bytes: int


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


def _check_directory(path: str, msg: re_pb2.Directory, function: int) -> None:
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
    for f in msg.files:
        digests.validate(f.digest, function)


def _join(parent: str, name: str) -> str:
    return f"{parent}/{name}" if parent else name


def _over(what: str, value: int, flag: str, limit: str) -> FailedPrecondition:
    """'Input root has 1073741824 files, over --max-input-files 1000000'; `what` holds
    "{n}" where the count goes."""
    shown = f"more than {_CAP - 1}" if value >= _CAP else str(value)
    return FailedPrecondition(f"Input root has {what.format(n=shown)}, over {flag} {limit}")


async def _fetch_directories(
    cas: CasClient,
    scope: Scope,
    root: re_pb2.Digest,
    cache: DirectoryCache | None,
    limits: InputLimits,
) -> tuple[dict[str, re_pb2.Directory], dict[str, str], int]:
    """Every distinct Directory under `root`, by key; the first (shortest) path each
    was reached at, for messages; and how many were read from the CAS.

    Refuses early what is over a limit however it is counted: more levels than
    `limits.depth`, or more distinct directories than `limits.directories`."""
    parsed: dict[str, re_pb2.Directory] = {}
    first_path: dict[str, str] = {digests.key(root): ""}
    level: list[re_pb2.Digest] = [root]
    prefix = f"{scope.digest_function}:"
    depth = read = 0
    while level:
        if depth > limits.depth:
            raise _over(
                "directories nested {n} deep", depth, "--max-input-depth", str(limits.depth)
            )
        need: list[re_pb2.Digest] = []
        for d in level:
            k = digests.key(d)
            hit = cache.get(prefix + k) if cache is not None else None
            if hit is not None:
                parsed[k] = hit
            else:
                digests.validate(d, scope.digest_function)
                need.append(d)
        small = [d for d in need if d.size_bytes <= cas.batch_blob_limit]
        blobs = await cas.read_small(scope, small) if small else {}
        for d in need:
            if d.size_bytes > cas.batch_blob_limit:
                blobs[digests.key(d)] = await cas.read_blob(scope, d)
        read += len(need)
        since_yield = 0
        for k, data in blobs.items():
            try:
                parsed[k] = re_pb2.Directory.FromString(data)
            except Exception as err:  # DecodeError
                raise InvalidArgument(f"Failed to parse directory {k}: {err}") from None
            if cache is not None:
                cache.put(prefix + k, len(data), parsed[k])
            since_yield += len(data) + 1000
            if since_yield > PARSE_SLICE:
                since_yield = 0
                await asyncio.sleep(0)  # a wide level parses in slices
        following: list[re_pb2.Digest] = []
        for d in level:
            k = digests.key(d)
            path = first_path[k]
            for sub in parsed[k].directories:
                sk = digests.key(sub.digest)
                if sk not in first_path:
                    first_path[sk] = _join(path, sub.name)
                    following.append(sub.digest)
        if len(first_path) - 1 > limits.directories:
            raise _over(
                "at least {n} directories",
                len(first_path) - 1,
                "--max-input-directories",
                str(limits.directories),
            )
        level = following
        depth += 1
    return parsed, first_path, read


def measure(parsed: dict[str, re_pb2.Directory], root_key: str) -> TreeSize:
    """What the Directory `root_key` expands to, counted bottom-up once per distinct
    digest (iteratively: no recursion limit, whatever the depth)."""
    sizes: dict[str, TreeSize] = {}
    stack: list[tuple[str, bool]] = [(root_key, False)]
    while stack:
        k, children_done = stack.pop()
        if k in sizes:
            continue
        msg = parsed[k]
        if not children_done:
            stack.append((k, True))
            for sub in msg.directories:
                sk = digests.key(sub.digest)
                if sk not in sizes:
                    stack.append((sk, False))
            continue
        files = len(msg.files) + len(msg.symlinks)
        dirs = len(msg.directories)
        size = sum(f.digest.size_bytes for f in msg.files)
        depth = 0
        for sub in msg.directories:
            c = sizes[digests.key(sub.digest)]
            files += c.files
            dirs += c.directories
            size += c.bytes
            depth = max(depth, c.depth + 1)
        sizes[k] = TreeSize(min(files, _CAP), min(dirs, _CAP), depth, min(size, _CAP))
    return sizes[root_key]


def check_limits(size: TreeSize, limits: InputLimits) -> None:
    """FAILED_PRECONDITION naming the first limit `size` is over."""
    if size.files > limits.files:
        raise _over("{n} files", size.files, "--max-input-files", str(limits.files))
    if size.directories > limits.directories:
        raise _over(
            "{n} directories", size.directories, "--max-input-directories", str(limits.directories)
        )
    if size.depth > limits.depth:
        raise _over(
            "directories nested {n} deep", size.depth, "--max-input-depth", str(limits.depth)
        )
    if size.bytes > limits.bytes:
        raise _over(
            "{n} bytes of files", size.bytes, "--max-input-bytes", format_size(limits.bytes)
        )


def _expand(
    parsed: dict[str, re_pb2.Directory],
    first_path: dict[str, str],
    root_key: str,
    function: int,
    limits: InputLimits,
) -> InputTree:
    """Check every distinct directory, measure the tree against `limits`, then (only
    then) expand it into paths. Runs in a thread."""
    for k, msg in parsed.items():
        _check_directory(first_path[k], msg, function)
    check_limits(measure(parsed, root_key), limits)
    tree = InputTree()
    wants: dict[tuple[str, bool], Want] = {}  # one Want per distinct file, not per path
    frontier: list[tuple[str, str]] = [("", root_key)]
    while frontier:
        following: list[tuple[str, str]] = []
        for path, k in frontier:
            msg = parsed[k]
            if path:
                tree.directories.append(path)
            for f in msg.files:
                wk = (digests.key(f.digest), f.is_executable)
                want = wants.get(wk)
                if want is None:
                    want = wants[wk] = Want(f.digest, f.is_executable)
                tree.files.append((_join(path, f.name), want))
            for s in msg.symlinks:
                tree.symlinks.append((_join(path, s.name), s.target))
            for sub in msg.directories:
                following.append((_join(path, sub.name), digests.key(sub.digest)))
        frontier = following
    check_symlinks(tree)
    return tree


async def fetch_tree(
    cas: CasClient,
    scope: Scope,
    root: re_pb2.Digest,
    cache: DirectoryCache | None = None,
    limits: InputLimits | None = None,
) -> InputTree:
    """Fetch, bound and validate the input root `root`.

    FAILED_PRECONDITION if blobs are missing or the expanded tree is over a limit,
    INVALID_ARGUMENT if it is malformed."""
    limits = limits or InputLimits()
    parsed, first_path, read = await _fetch_directories(cas, scope, root, cache, limits)
    tree = await _in_thread(
        _expand, parsed, first_path, digests.key(root), scope.digest_function, limits
    )
    tree.directories_read = read
    return tree


async def _in_thread(fn: Callable[..., T], *args: Any) -> T:
    """Run `fn` in a thread; if cancelled meanwhile, let it finish before re-raising,
    so nothing is still writing into a build directory that is being removed."""
    fut = asyncio.ensure_future(asyncio.to_thread(fn, *args))
    try:
        return await asyncio.shield(fut)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):
            await fut
        raise


async def materialise(
    cas: CasClient,
    cache: LocalCache,
    scope: Scope,
    root_digest: re_pb2.Digest,
    root: str,
    directories: DirectoryCache | None = None,
    limits: InputLimits | None = None,
) -> InputTree:
    """Fetch the input root `root_digest` and create it under the existing directory
    `root`: the whole of an action's input step, within `limits.fetch_timeout`
    (DEADLINE_EXCEEDED naming --input-fetch-timeout when it runs out). Files are
    hardlinked when `cache.link_inputs`, copied otherwise."""
    limits = limits or InputLimits()
    try:
        async with asyncio.timeout(limits.fetch_timeout):
            tree = await fetch_tree(cas, scope, root_digest, directories, limits)
            sources = await cache.ensure(cas, scope, [w for _, w in tree.files])
            try:
                await _in_thread(link_tree, tree, root, sources, cache.link_inputs)
            except BaseException:
                cache.unpin(sources)
                raise
            await cache.unpin_slowly(sources)
    except TimeoutError:
        raise DeadlineExceeded(
            "Input root not fetched within --input-fetch-timeout "
            f"{format_duration(limits.fetch_timeout)}"
        ) from None
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


_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
_NO_COPY_FILE_RANGE = (errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EPERM)


def copy_file(src: str, dst: str, mode: int) -> None:
    """Create `dst` with `mode` holding the bytes of `src`, copied in the kernel."""
    s = os.open(src, os.O_RDONLY | os.O_CLOEXEC)
    try:
        left = os.fstat(s).st_size
        d = os.open(dst, _CREATE, mode)
        try:
            while left > 0:
                try:
                    n = os.copy_file_range(s, d, left)
                except OSError as err:
                    if err.errno not in _NO_COPY_FILE_RANGE:
                        raise
                    n = os.sendfile(d, s, None, left)
                if n == 0:
                    break
                left -= n
        finally:
            os.close(d)
    finally:
        os.close(s)


def _copy_files(items: Sequence[tuple[str, str, int]]) -> None:
    for src, dst, mode in items:
        copy_file(src, dst, mode)


def _link_files(items: Sequence[tuple[str, str, int]]) -> None:
    link = os.link
    copy = False
    for src, dst, mode in items:
        if not copy:
            try:
                link(src, dst)
                continue
            except OSError as err:
                if err.errno not in (errno.EXDEV, errno.EMLINK, errno.EPERM):
                    raise
                copy = err.errno == errno.EXDEV
        copy_file(src, dst, mode)


def link_tree(tree: InputTree, root: str, sources: list[str], hardlink: bool = False) -> None:
    """Create `tree` under the existing directory `root` from `sources` (cache paths,
    in `tree.files` order): read-only copies, or hardlinks when `hardlink`."""
    mkdir = os.mkdir
    prefix = root + "/"
    for d in tree.directories:
        mkdir(prefix + d)
    items = [
        (src, prefix + rel, 0o555 if want.executable else 0o444)
        for (rel, want), src in zip(tree.files, sources, strict=True)
    ]
    work = _link_files if hardlink else _copy_files
    # Creating files is bound by syscall latency, so a few threads help.
    n = max(1, min(COPY_THREADS, len(items) // 256))
    if n == 1:
        work(items)
    else:
        with concurrent.futures.ThreadPoolExecutor(n, "redbarn-inputs") as pool:
            for f in [pool.submit(work, items[i::n]) for i in range(n)]:
                f.result()
    for rel, target in tree.symlinks:
        os.symlink(target, prefix + rel)
