"""Outputs: validate declared paths, create their parents, collect and upload them.

Paths are resolved relative to the working directory and must stay inside the input
root, lexically and (for parents that are symlinks) physically. Collection never
follows a symlink: a declared path that is a symlink becomes an OutputSymlink, and
symlinks inside an output directory become SymlinkNodes of its Tree.

What an action leaves is bounded (`OutputLimits`): the number of output files and
symlinks (inside output directories too) and their total size are counted by a
stat-only walk before anything is hashed, and stdout and stderr each have a size
limit; over one the action fails with FAILED_PRECONDITION naming the flag. Output
files stay on disk until they are uploaded: only files up to `INLINE_LIMIT` are read
into memory, and only up to `INLINE_BUDGET` in total per action; the rest are hashed
in chunks here and streamed from disk by the CAS client.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field

from redbarn import digests
from redbarn.config import format_size
from redbarn.errors import FailedPrecondition, InvalidArgument
from redbarn.proto import remote_execution_pb2 as re_pb2
from redbarn.worker.cas import Blob
from redbarn.worker.config import WorkerConfig

INLINE_LIMIT = 64 << 10  # files up to this size may be kept in memory once read
INLINE_BUDGET = 4 << 20  # ...as long as an action's inline files total no more


@dataclass(frozen=True)
class OutputLimits:
    """Bounds on what an action leaves (WorkerConfig's max_output_* and max_stdio_bytes)."""

    files: int = WorkerConfig.max_output_files
    bytes: int = WorkerConfig.max_output_bytes
    stdio: int = WorkerConfig.max_stdio_bytes

    @classmethod
    def of(cls, config: WorkerConfig) -> OutputLimits:
        return cls(config.max_output_files, config.max_output_bytes, config.max_stdio_bytes)


class _Tally:
    """Running count of output files and bytes against `limits`."""

    def __init__(self, limits: OutputLimits) -> None:
        self.limits = limits
        self.files = 0
        self.bytes = 0

    def add(self, size: int) -> None:
        self.files += 1
        self.bytes += size
        if self.files > self.limits.files:
            raise FailedPrecondition(
                f"Action left more than {self.limits.files} output files and symlinks, "
                f"over --max-output-files {self.limits.files}"
            )
        if self.bytes > self.limits.bytes:
            raise FailedPrecondition(
                f"Action left at least {self.bytes} bytes of output files, "
                f"over --max-output-bytes {format_size(self.limits.bytes)}"
            )

    def walk(self, path: str) -> None:
        """Count the files and symlinks under directory `path` (lstat only)."""
        stack = [path]
        while stack:
            with os.scandir(stack.pop()) as it:
                for e in it:
                    if e.is_dir(follow_symlinks=False):
                        stack.append(e.path)
                    elif e.is_symlink():
                        self.add(0)
                    elif e.is_file(follow_symlinks=False):
                        self.add(e.stat(follow_symlinks=False).st_size)


class _Inline:
    """How much of an action's output is held in memory so far."""

    def __init__(self, budget: int = INLINE_BUDGET) -> None:
        self.left = budget


def normalise(base: str, path: str, what: str) -> str:
    """`base`/`path` (both relative to the input root) normalised lexically.

    INVALID_ARGUMENT if `path` is absolute or the result escapes the input root."""
    if path.startswith("/"):
        raise InvalidArgument(f'{what} "{path}" is absolute')
    parts: list[str] = [c for c in base.split("/") if c not in ("", ".")]
    for c in path.split("/"):
        if c in ("", "."):
            continue
        if c == "..":
            if not parts:
                raise InvalidArgument(f'{what} "{path}" escapes the input root')
            parts.pop()
        else:
            parts.append(c)
    return "/".join(parts)


@dataclass
class Declared:
    """The outputs a Command declares, normalised to input-root-relative paths."""

    working_directory: str
    paths: list[tuple[str, str]]  # (as declared, relative to the input root)
    legacy: bool  # output_files/output_directories were used (REAPI < 2.1)
    legacy_directories: set[str] = field(default_factory=set)
    # Also upload each Directory and set root_directory_digest (DIRECTORY_ONLY and
    # TREE_AND_DIRECTORY); the Tree is uploaded in every case, as Buildbarn does.
    directories: bool = False


def declared(command: re_pb2.Command) -> Declared:
    wd = normalise("", command.working_directory, "Working directory")
    if command.output_paths:
        names, legacy, dirs = list(command.output_paths), False, set()
    else:
        names = list(command.output_files) + list(command.output_directories)
        legacy, dirs = True, set(command.output_directories)
    paths = [(p, normalise(wd, p, "Output path")) for p in names]
    directories = command.output_directory_format in (
        re_pb2.Command.DIRECTORY_ONLY,
        re_pb2.Command.TREE_AND_DIRECTORY,
    )
    return Declared(wd, paths, legacy, dirs, directories)


def _inside(root: str, path: str) -> bool:
    real = os.path.realpath(path)
    return real == root or real.startswith(root + "/")


def make_parents(root: str, relpath: str) -> None:
    """mkdir -p the parent of `relpath` under `root`, refusing to leave `root` through
    a symlink or to go through a non-directory."""
    root = os.path.realpath(root)
    cur = root
    for c in relpath.split("/")[:-1]:
        cur = f"{cur}/{c}"
        try:
            st = os.lstat(cur)
        except FileNotFoundError:
            os.mkdir(cur)
            continue
        if stat.S_ISLNK(st.st_mode):
            if not _inside(root, cur):
                raise InvalidArgument(
                    f'Output parent "{relpath}" leaves the input root through a symlink'
                )
            os.makedirs(os.path.realpath(cur), exist_ok=True)
        elif not stat.S_ISDIR(st.st_mode):
            raise InvalidArgument(f'Output parent of "{relpath}" is not a directory')


@dataclass
class Collected:
    result: re_pb2.ActionResult
    blobs: list[Blob]


def _file_blob(path: str, size: int, function: int, inline: _Inline | None = None) -> Blob:
    """`path` as a blob: in memory if small and the action's budget allows, else
    hashed in chunks and left on disk."""
    if size <= INLINE_LIMIT and inline is not None and inline.left >= size:
        with open(path, "rb") as f:
            data = f.read()
        if len(data) == size:
            inline.left -= size
            return Blob(digests.of_bytes(data, function), data=data)
    return Blob(digests.of_file(path, function), path=path)


def _directory(
    path: str,
    function: int,
    blobs: list[Blob],
    tree: list[re_pb2.Directory],
    inline: _Inline | None = None,
) -> re_pb2.Directory:
    """Build the Directory for `path`, appending descendants to `tree` in post-order."""
    d = re_pb2.Directory()
    with os.scandir(path) as it:
        entries = sorted(it, key=lambda e: e.name)
    for e in entries:
        st = e.stat(follow_symlinks=False)
        if stat.S_ISLNK(st.st_mode):
            d.symlinks.add(name=e.name, target=os.readlink(e.path))
        elif stat.S_ISDIR(st.st_mode):
            child = _directory(e.path, function, blobs, tree, inline)
            tree.append(child)
            data = child.SerializeToString(deterministic=True)
            d.directories.add(name=e.name, digest=digests.of_bytes(data, function))
        elif stat.S_ISREG(st.st_mode):
            blob = _file_blob(e.path, st.st_size, function, inline)
            blobs.append(blob)
            d.files.add(name=e.name, digest=blob.digest, is_executable=bool(st.st_mode & 0o111))
        # sockets, fifos and devices inside an output directory are skipped
    return d


def make_tree(
    path: str, function: int, blobs: list[Blob], inline: _Inline | None = None
) -> tuple[re_pb2.Tree, bool]:
    """A Tree for directory `path`: children deduplicated, parents before children."""
    post: list[re_pb2.Directory] = []
    root = _directory(path, function, blobs, post, inline)
    seen: set[bytes] = set()
    children: list[re_pb2.Directory] = []
    for child in reversed(post):  # reverse post-order is a topological order
        data = child.SerializeToString(deterministic=True)
        if data not in seen:
            seen.add(data)
            children.append(child)
    return re_pb2.Tree(root=root, children=children), True


def _existing(real_root: str, decl: Declared) -> list[tuple[str, str, os.stat_result]]:
    """The declared outputs that exist: (as declared, full path, lstat)."""
    found = []
    for shown, rel in decl.paths:
        full = f"{real_root}/{rel}" if rel else real_root
        parent = os.path.dirname(full)
        if not os.path.exists(parent):
            continue
        if not _inside(real_root, parent):
            raise InvalidArgument(f'Output path "{shown}" leaves the input root through a symlink')
        try:
            st = os.lstat(full)
        except FileNotFoundError:
            continue
        found.append((shown, full, st))
    return found


def collect(
    root: str, decl: Declared, function: int, limits: OutputLimits | None = None
) -> Collected:
    """Collect every declared output that exists (missing ones are skipped).

    FAILED_PRECONDITION, before anything is hashed, if they are over `limits`."""
    result = re_pb2.ActionResult()
    blobs: list[Blob] = []
    real_root = os.path.realpath(root)
    found = _existing(real_root, decl)
    tally = _Tally(limits or OutputLimits())
    for _shown, full, st in found:
        if stat.S_ISDIR(st.st_mode):
            tally.walk(full)
        else:
            tally.add(st.st_size if stat.S_ISREG(st.st_mode) else 0)
    inline = _Inline()
    for shown, full, st in found:
        if stat.S_ISLNK(st.st_mode):
            link = re_pb2.OutputSymlink(path=shown, target=os.readlink(full))
            result.output_symlinks.append(link)
            if decl.legacy:
                if shown in decl.legacy_directories:
                    result.output_directory_symlinks.append(link)
                else:
                    result.output_file_symlinks.append(link)
        elif stat.S_ISREG(st.st_mode):
            blob = _file_blob(full, st.st_size, function, inline)
            blobs.append(blob)
            result.output_files.add(
                path=shown, digest=blob.digest, is_executable=bool(st.st_mode & 0o111)
            )
        elif stat.S_ISDIR(st.st_mode):
            tree, topo = make_tree(full, function, blobs, inline)
            data = tree.SerializeToString(deterministic=True)
            tree_blob = Blob(digests.of_bytes(data, function), data=data)
            blobs.append(tree_blob)
            out = result.output_directories.add(
                path=shown, tree_digest=tree_blob.digest, is_topologically_sorted=topo
            )
            if decl.directories:
                dir_blobs = [
                    Blob(digests.of_bytes(encoded, function), data=encoded)
                    for encoded in (
                        msg.SerializeToString(deterministic=True)
                        for msg in [tree.root, *tree.children]
                    )
                ]
                blobs.extend(dir_blobs)
                out.root_directory_digest.CopyFrom(dir_blobs[0].digest)
        else:
            raise InvalidArgument(
                f'Output path "{shown}" is not a directory, regular file or symlink'
            )
    return Collected(result, blobs)


def log_blob(path: str, function: int, limits: OutputLimits | None = None) -> Blob | None:
    """stdout/stderr as a blob, or None when empty (digests are set only when size > 0).

    FAILED_PRECONDITION if it is larger than `limits.stdio` (named after the file)."""
    limit = (limits or OutputLimits()).stdio
    size = os.stat(path).st_size
    if size > limit:
        name = os.path.basename(path)
        raise FailedPrecondition(
            f"Action wrote {size} bytes to {name}, over --max-stdio-bytes {format_size(limit)}"
        )
    if size == 0:
        return None
    return _file_blob(path, size, function, _Inline(INLINE_LIMIT))
