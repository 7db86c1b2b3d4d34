"""The local content-addressed file cache that input roots are materialised from.

Layout under the cache directory (mode 0700: only the worker's user reaches it):

    plain/<fn>/<hh>/<hash>-<size>   mode 0444, for FileNode is_executable=false
    exec/<fn>/<hh>/<hash>-<size>    mode 0555, for is_executable=true
    tmp/                            downloads in progress, emptied on start
    LOCK                            flock: one worker process per cache directory

Executable and plain copies are separate files because hardlinks share their mode.
The index (path -> size, in LRU order) lives in memory and is rebuilt from the
directory on start, ordered by ctime. Entries pinned by a running action are never
evicted.

An entry is trusted only while it is exactly the file the worker wrote. Each entry
the worker writes gets a *seal*: inode, size, mtime, mode and owner, plus ctime when
inputs are copied (`link_inputs=False`, where nothing else links the file, so any
chmod, write or truncate changes it; hardlinking changes ctime by itself, and then
the action runs as another user who cannot change the file at all). Every reuse
compares the seal with an lstat; an entry found on disk at start has no seal and is
re-hashed on its first use. A mismatch drops the entry and fetches the blob again,
so an action that rewrites a cache file (through a hardlink, or by its path when it
runs as the worker's user) cannot change what a later action reads.

All index methods run on the event loop thread; `link_tree` (in `inputs`) and the
checks here read cache files from other threads, and only pinned ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import shutil
import stat
import uuid
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from redbarn import digests
from redbarn.errors import FailedPrecondition
from redbarn.proto import remote_execution_pb2 as re_pb2
from redbarn.worker.cas import CasClient, Scope

log = logging.getLogger(__name__)
WRITE_THREADS = 4
SLICE = 20_000  # index entries handled per event loop turn
# What an entry looked like when the worker wrote or last verified it:
# (inode, size, mtime_ns, mode, uid, ctime_ns or 0 when inputs are hardlinked).
Seal = tuple[int, int, int, int, int, int]


@dataclass(frozen=True)
class Want:
    """A file an input root needs: its digest and whether it must be executable."""

    digest: re_pb2.Digest
    executable: bool


class LocalCache:
    def __init__(self, root: str, max_bytes: int, *, link_inputs: bool = False) -> None:
        self.root = os.path.abspath(root)
        self.max_bytes = max_bytes
        # Hardlink inputs into build directories (only when actions run as another
        # user) instead of copying them.
        self.link_inputs = link_inputs
        os.makedirs(self.root, exist_ok=True)
        os.chmod(self.root, 0o700)
        self._lock_fd = os.open(os.path.join(self.root, "LOCK"), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            raise FailedPrecondition(
                f"Cache directory {self.root} is in use by another worker process"
            ) from None
        self._tmp = os.path.join(self.root, "tmp")
        shutil.rmtree(self._tmp, ignore_errors=True)
        os.makedirs(self._tmp)
        self._index: OrderedDict[str, int] = OrderedDict()
        self._seals: dict[str, Seal] = {}
        self._pins: dict[str, int] = {}
        self._inflight: dict[str, asyncio.Future[None]] = {}
        self._bases: dict[tuple[bool, int], str] = {}
        self.total_bytes = 0
        self.evictions = 0
        # Per wanted file of each `ensure`: found in the cache, or not (then fetched, copied
        # from the other mode's entry, or waited for while another action fetched it).
        self.hits = 0
        self.misses = 0
        self.fetched_bytes = 0  # bytes read from the CAS into the cache
        self.rejected = 0  # entries found altered on disk, dropped and fetched again
        self._rebuild()

    def close(self) -> None:
        os.close(self._lock_fd)

    def _rebuild(self) -> None:
        found: list[tuple[float, str, int]] = []
        for kind in ("plain", "exec"):
            base = os.path.join(self.root, kind)
            for dirpath, _dirs, files in os.walk(base):
                for name in files:
                    path = os.path.join(dirpath, name)
                    st = os.lstat(path)
                    if not name.endswith(f"-{st.st_size}"):  # truncated or foreign: drop it
                        os.unlink(path)
                        continue
                    found.append((st.st_ctime, path, st.st_size))
        found.sort()
        for _ctime, path, size in found:
            self._index[path] = size
            self.total_bytes += size
        log.info("cache %s: %d files, %d bytes", self.root, len(found), self.total_bytes)
        self._evict()

    def __len__(self) -> int:
        return len(self._index)

    def path(self, scope: Scope, want: Want) -> str:
        d = want.digest
        base = self._bases.get((want.executable, scope.digest_function))
        if base is None:
            kind = "exec" if want.executable else "plain"
            base = os.path.join(self.root, kind, digests.function_component(scope.digest_function))
            self._bases[(want.executable, scope.digest_function)] = base
        h = d.hash
        return f"{base}/{h[:2]}/{h}-{d.size_bytes}"

    # -- pins and LRU ------------------------------------------------------------

    def pin(self, paths: Iterable[str]) -> None:
        for p in paths:
            self._pins[p] = self._pins.get(p, 0) + 1

    def unpin(self, paths: Iterable[str]) -> None:
        for p in paths:
            n = self._pins[p] - 1
            if n:
                self._pins[p] = n
            else:
                del self._pins[p]

    async def unpin_slowly(self, paths: Sequence[str]) -> None:
        """`unpin`, a slice per event loop turn."""
        for start in range(0, len(paths), SLICE):
            if start:
                await asyncio.sleep(0)
            self.unpin(paths[start : start + SLICE])

    def _insert(self, path: str, size: int, seal: Seal) -> None:
        if path not in self._index:
            self._index[path] = size
            self.total_bytes += size
        self._seals[path] = seal
        self._index.move_to_end(path)
        self._evict()

    def _drop(self, path: str) -> None:
        """Forget an entry found altered (it stays pinned by its caller)."""
        size = self._index.pop(path, None)
        if size is not None:
            self.total_bytes -= size
        self._seals.pop(path, None)
        self.rejected += 1
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)

    # -- sealing -----------------------------------------------------------------

    def seal(self, path: str) -> Seal:
        """The seal of the file at `path` as it is now."""
        st = os.lstat(path)
        ctime = 0 if self.link_inputs else st.st_ctime_ns
        return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_mode, st.st_uid, ctime)

    def _intact(self, path: str, want: Want, sealed: Seal | None, function: int) -> Seal | None:
        """The entry's seal if it is still what the worker wrote, else None. Without a
        seal (found on disk at start) the file is re-hashed. Runs in a thread."""
        try:
            now = self.seal(path)
        except FileNotFoundError:
            return None
        if sealed is not None:
            return now if now == sealed else None
        mode, uid, size = now[3], now[4], now[1]
        if (
            not stat.S_ISREG(mode)
            or mode & 0o222  # writable: not as the worker left it
            or bool(mode & 0o100) != want.executable
            or uid != os.geteuid()
            or size != want.digest.size_bytes
        ):
            return None
        got = digests.of_file(path, function)
        if got.hash != want.digest.hash or got.size_bytes != want.digest.size_bytes:
            return None
        after = self.seal(path)
        return after if after == now else None

    async def _check_hits(self, scope: Scope, hits: dict[str, Want]) -> list[str]:
        """Check cached entries before reuse; drop and return the altered ones."""
        seals = self._seals
        fn = scope.digest_function

        def check(part: list[tuple[str, Want, Seal | None]]) -> list[tuple[str, Seal | None]]:
            return [(p, self._intact(p, w, s, fn)) for p, w, s in part]

        bad: list[str] = []
        pending = list(hits.items())
        for start in range(0, len(pending), SLICE):  # a slice per event loop turn
            items = [(p, w, seals.get(p)) for p, w in pending[start : start + SLICE]]
            n = max(1, min(WRITE_THREADS, len(items) // 512))
            parts = await asyncio.gather(*(asyncio.to_thread(check, items[i::n]) for i in range(n)))
            for part in parts:
                for p, seal in part:
                    if seal is None:
                        if p in self._index:
                            log.warning("cache entry %s was altered on disk; fetching it again", p)
                            self._drop(p)
                        bad.append(p)
                    else:
                        seals[p] = seal
        return bad

    def _evict(self) -> None:
        if self.total_bytes <= self.max_bytes:
            return
        for path in list(self._index):
            if self.total_bytes <= self.max_bytes:
                break
            if path in self._pins:
                continue
            size = self._index.pop(path)
            self._seals.pop(path, None)
            self.total_bytes -= size
            self.evictions += 1
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)

    # -- filling -----------------------------------------------------------------

    async def ensure(self, cas: CasClient, scope: Scope, wants: Sequence[Want]) -> list[str]:
        """Make every wanted file present, pin it, and return the cache paths in order.

        The caller must `unpin` the returned paths when done with them. Missing blobs
        are fetched concurrently: small ones together by BatchReadBlobs, large ones by
        ByteStream. An executable copy is made from a cached plain one if possible."""
        paths: list[str] = []
        try:
            index = self._index
            absent: dict[str, Want] = {}
            hits: dict[str, Want] = {}
            for start in range(0, len(wants), SLICE):  # never hold the loop for long
                if start:
                    await asyncio.sleep(0)
                part = [self.path(scope, w) for w in wants[start : start + SLICE]]
                self.pin(part)
                paths.extend(part)
                for p, w in zip(part, wants[start : start + SLICE], strict=True):
                    if p in index:
                        index.move_to_end(p)
                        hits[p] = w
                    else:
                        absent[p] = w
            if hits:
                for p in await self._check_hits(scope, hits):
                    absent[p] = hits[p]
            self.hits += len(hits) - len(absent.keys() & hits.keys())
            self.misses += len(absent)
            if absent:
                await self._fill(cas, scope, absent)
        except BaseException:
            self.unpin(paths)
            raise
        return paths

    async def _fill(self, cas: CasClient, scope: Scope, absent: dict[str, Want]) -> None:
        """Fetch `absent`, sharing downloads with concurrent callers: a path another
        action is already fetching is waited for, then fetched here if that failed."""
        while absent:
            waits: list[asyncio.Future[None]] = []
            mine: dict[str, Want] = {}
            loop = asyncio.get_running_loop()
            for p, w in absent.items():
                fut = self._inflight.get(p)
                if fut is not None:
                    waits.append(fut)
                elif p not in self._index:
                    self._inflight[p] = loop.create_future()
                    mine[p] = w
            try:
                if mine:
                    await self._fetch(cas, scope, mine)
            finally:
                for p in mine:
                    self._inflight.pop(p).set_result(None)  # waiters re-check the index
            if waits:
                await asyncio.gather(*waits)
            absent = {p: w for p, w in absent.items() if p not in self._index}

    async def _fetch(self, cas: CasClient, scope: Scope, wants: dict[str, Want]) -> None:
        small: dict[str, Want] = {}
        jobs = []
        for p, w in wants.items():
            other = self.path(scope, Want(w.digest, not w.executable))
            if other in self._index:
                jobs.append(self._copy_local(other, p, w))
            elif w.digest.size_bytes <= cas.batch_blob_limit:
                small[p] = w
            else:
                jobs.append(self._fetch_large(cas, scope, p, w))
        if small:
            jobs.append(self._fetch_small(cas, scope, small))
        results = await asyncio.gather(*jobs, return_exceptions=True)
        for r in results:
            if isinstance(r, BaseException):
                raise r

    def _tmp_name(self) -> str:
        return os.path.join(self._tmp, uuid.uuid4().hex)

    def _publish(self, tmp: str, path: str, want: Want) -> Seal:
        os.chmod(tmp, 0o555 if want.executable else 0o444)
        return self._rename(tmp, path)

    def _rename(self, tmp: str, path: str) -> Seal:
        """Move a complete file into place (so a crash never leaves a partial entry)
        and return its seal (after the rename, which changes its ctime)."""
        try:
            os.rename(tmp, path)
        except FileNotFoundError:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            os.rename(tmp, path)
        return self.seal(path)

    async def _copy_local(self, src: str, dst: str, want: Want) -> None:
        def copy() -> Seal:
            tmp = self._tmp_name()
            shutil.copyfile(src, tmp)
            return self._publish(tmp, dst, want)

        self.pin([src])
        try:
            seal = await asyncio.to_thread(copy)
        finally:
            self.unpin([src])
        self._insert(dst, want.digest.size_bytes, seal)

    async def _fetch_small(self, cas: CasClient, scope: Scope, wants: dict[str, Want]) -> None:
        blobs = await cas.read_small(scope, [w.digest for w in wants.values()])
        self.fetched_bytes += sum(w.digest.size_bytes for w in wants.values())

        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)

        def write(items: list[tuple[str, Want]]) -> list[Seal]:
            seals = []
            for p, w in items:
                tmp = self._tmp_name()
                # Created with its final mode: one syscall fewer than a chmod per file.
                fd = os.open(tmp, flags, 0o555 if w.executable else 0o444)
                try:
                    data = memoryview(blobs[digests.key(w.digest)])
                    while data:
                        data = data[os.write(fd, data) :]
                finally:
                    os.close(fd)
                seals.append(self._rename(tmp, p))
            return seals

        # File creation is bound by syscall latency, so a few threads help.
        items = list(wants.items())
        n = max(1, min(WRITE_THREADS, len(items) // 64))
        parts = await asyncio.gather(*(asyncio.to_thread(write, items[i::n]) for i in range(n)))
        for i, seals in enumerate(parts):
            for (p, w), seal in zip(items[i::n], seals, strict=True):
                self._insert(p, w.digest.size_bytes, seal)

    async def _fetch_large(self, cas: CasClient, scope: Scope, path: str, want: Want) -> None:
        tmp = self._tmp_name()
        try:
            await cas.read_to_file(scope, want.digest, tmp)
            self.fetched_bytes += want.digest.size_bytes
            seal = self._publish(tmp, path, want)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        self._insert(path, want.digest.size_bytes, seal)
