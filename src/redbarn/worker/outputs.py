"""Outputs: validate declared paths, create their parents, collect and upload them.

Paths are resolved relative to the working directory and must stay inside the input
root, lexically and (for parents that are symlinks) physically. Collection never
follows a symlink: a declared path that is a symlink becomes an OutputSymlink, and
symlinks inside an output directory become SymlinkNodes of its Tree.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field

from redbarn import digests
from redbarn.errors import InvalidArgument
from redbarn.proto import remote_execution_pb2 as re_pb2
from redbarn.worker.cas import Blob

INLINE_LIMIT = 1 << 20  # files up to this size are read into memory when collected


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


def _file_blob(path: str, size: int, function: int) -> Blob:
    if size <= INLINE_LIMIT:
        with open(path, "rb") as f:
            data = f.read()
        return Blob(digests.of_bytes(data, function), data=data)
    return Blob(digests.of_file(path, function), path=path)


def _directory(
    path: str, function: int, blobs: list[Blob], tree: list[re_pb2.Directory]
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
            child = _directory(e.path, function, blobs, tree)
            tree.append(child)
            data = child.SerializeToString(deterministic=True)
            d.directories.add(name=e.name, digest=digests.of_bytes(data, function))
        elif stat.S_ISREG(st.st_mode):
            blob = _file_blob(e.path, st.st_size, function)
            blobs.append(blob)
            d.files.add(name=e.name, digest=blob.digest, is_executable=bool(st.st_mode & 0o111))
        # sockets, fifos and devices inside an output directory are skipped
    return d


def make_tree(path: str, function: int, blobs: list[Blob]) -> tuple[re_pb2.Tree, bool]:
    """A Tree for directory `path`: children deduplicated, parents before children."""
    post: list[re_pb2.Directory] = []
    root = _directory(path, function, blobs, post)
    seen: set[bytes] = set()
    children: list[re_pb2.Directory] = []
    for child in reversed(post):  # reverse post-order is a topological order
        data = child.SerializeToString(deterministic=True)
        if data not in seen:
            seen.add(data)
            children.append(child)
    return re_pb2.Tree(root=root, children=children), True


def collect(root: str, decl: Declared, function: int) -> Collected:
    """Collect every declared output that exists (missing ones are skipped)."""
    result = re_pb2.ActionResult()
    blobs: list[Blob] = []
    real_root = os.path.realpath(root)
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
        if stat.S_ISLNK(st.st_mode):
            link = re_pb2.OutputSymlink(path=shown, target=os.readlink(full))
            result.output_symlinks.append(link)
            if decl.legacy:
                if shown in decl.legacy_directories:
                    result.output_directory_symlinks.append(link)
                else:
                    result.output_file_symlinks.append(link)
        elif stat.S_ISREG(st.st_mode):
            blob = _file_blob(full, st.st_size, function)
            blobs.append(blob)
            result.output_files.add(
                path=shown, digest=blob.digest, is_executable=bool(st.st_mode & 0o111)
            )
        elif stat.S_ISDIR(st.st_mode):
            tree, topo = make_tree(full, function, blobs)
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


def log_blob(path: str, function: int) -> Blob | None:
    """stdout/stderr as a blob, or None when empty (digests are set only when size > 0)."""
    size = os.stat(path).st_size
    if size == 0:
        return None
    return _file_blob(path, size, function)
