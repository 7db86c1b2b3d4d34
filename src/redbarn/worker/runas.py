"""`--run-as USER[:GROUP]`: the dedicated user actions run as, and the checks at start.

The worker keeps its own uid; each command is started with the action user's uid, its
gid and no supplementary groups. Because every process of that uid is killed after
each action, the user must be dedicated to actions: root (uid or gid 0) and the
worker's own uid are refused. Switching users needs root, or these capabilities:
CAP_SETUID and CAP_SETGID (start the command), CAP_CHOWN (hand it its build
directory), CAP_KILL (kill what it leaves), CAP_DAC_OVERRIDE and CAP_FOWNER (remove
what it wrote, whatever the modes it chose).

At start `check_isolation` runs a probe as the action user and refuses to start when
that user can read the worker's secrets (token file, TLS key) or enter the input cache,
or cannot reach the build directory. docs/security.md describes the trust model.
"""

from __future__ import annotations

import functools
import grp
import os
import pwd
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass

from redbarn.config import ConfigError


@dataclass(frozen=True)
class ActionUser:
    """The uid and gid actions run as, and the names they were given by."""

    name: str
    uid: int
    gid: int

    def __str__(self) -> str:
        return f"{self.name} (uid {self.uid}, gid {self.gid})"


def _uid(user: str) -> tuple[str, int, int | None]:
    try:
        pw = pwd.getpwnam(user)
        return pw.pw_name, pw.pw_uid, pw.pw_gid
    except KeyError:
        pass
    if user.isdigit():
        try:
            pw = pwd.getpwuid(int(user))
            return pw.pw_name, pw.pw_uid, pw.pw_gid
        except KeyError:
            return user, int(user), None
    raise ConfigError(f'invalid --run-as "{user}": no such user')


def _gid(group: str, spec: str) -> int:
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        pass
    if group.isdigit():
        return int(group)
    raise ConfigError(f'invalid --run-as "{spec}": no such group "{group}"')


def resolve(spec: str) -> ActionUser:
    """Parse `USER[:GROUP]` (names or numbers); the group defaults to the user's own.
    Refuses root and the worker's own uid with a ConfigError naming them."""
    user, sep, group = spec.partition(":")
    if not user or (sep and not group):
        raise ConfigError(f'invalid --run-as "{spec}": expected USER or USER:GROUP')
    name, uid, primary = _uid(user)
    if group:
        gid = _gid(group, spec)
    elif primary is None:
        raise ConfigError(f'invalid --run-as "{spec}": uid {uid} has no passwd entry; add :GROUP')
    else:
        gid = primary
    if uid == 0 or gid == 0:
        raise ConfigError(
            f'invalid --run-as "{spec}": actions must not run as root (uid {uid}, gid {gid})'
        )
    if uid in (os.getuid(), os.geteuid()):
        raise ConfigError(
            f'invalid --run-as "{spec}": uid {uid} is the worker\'s own; every process of the'
            " --run-as user is killed after each action, so it must be dedicated to actions"
        )
    return ActionUser(name, uid, gid)


# Capability numbers (linux/capability.h) --run-as needs, and what each is for.
CAPABILITIES = {
    "CAP_CHOWN": 0,
    "CAP_DAC_OVERRIDE": 1,
    "CAP_FOWNER": 3,
    "CAP_KILL": 5,
    "CAP_SETGID": 6,
    "CAP_SETUID": 7,
}


def missing_capabilities(status_path: str = "/proc/self/status") -> list[str]:
    """The capabilities of CAPABILITIES this process lacks (its effective set)."""
    effective = 0
    try:
        with open(status_path) as f:
            for line in f:
                if line.startswith("CapEff:"):
                    effective = int(line.split()[1], 16)
    except OSError:
        return list(CAPABILITIES)
    return [name for name, bit in CAPABILITIES.items() if not effective >> bit & 1]


def check_privileges() -> None:
    missing = missing_capabilities()
    if missing:
        raise ConfigError(
            "--run-as needs root (or these capabilities, which this process lacks): "
            + ", ".join(missing)
        )
    if not os.access(setpriv(), os.X_OK):
        raise ConfigError("--run-as needs setpriv (util-linux) to start actions; not found")


@functools.cache
def setpriv() -> str:
    """The path of util-linux's setpriv, which starts every command as the user.

    Not Popen's `user=`: that needs a full fork() of the worker, whose child runs
    gRPC's fork handlers (see redbarn.worker.runner)."""
    return shutil.which("setpriv") or "/usr/bin/setpriv"


def as_user(user: ActionUser, argv: Sequence[str]) -> list[str]:
    """`argv` run as `user` (uid, gid, no supplementary groups) through setpriv."""
    return [setpriv(), f"--reuid={user.uid}", f"--regid={user.gid}", "--clear-groups",
            "--", *argv]  # fmt: skip


# For each path: "r" if the user may read it, "x" if it may search/execute it.
_PROBE = 'for p; do r=-; x=-; [ -r "$p" ] && r=r; [ -x "$p" ] && x=x; echo "$r$x"; done'


def probe(user: ActionUser, paths: Sequence[str]) -> list[str]:
    """What `user` may do with each path, probed by a shell running as that user
    (so directory modes, ACLs and every parent directory count): "rx", "r-", "-x", "--"."""
    if not paths:
        return []
    out = subprocess.run(
        as_user(user, ["/bin/sh", "-c", _PROBE, "probe", *paths]),
        env={"PATH": "/usr/bin:/bin"},
        cwd="/",
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=30,
        check=True,
    )
    lines = out.stdout.decode().split()
    if len(lines) != len(paths):
        raise ConfigError(f"--run-as probe as {user} failed: {out.stderr.decode().strip()}")
    return lines


def check_isolation(
    user: ActionUser, *, build_dir: str, cache_dir: str, secrets: Sequence[tuple[str, str]]
) -> None:
    """Refuse to start unless `user` can reach `build_dir`, cannot enter `cache_dir`, and
    can read none of `secrets` ((flag, path) pairs; empty paths are skipped)."""
    files = [(flag, path) for flag, path in secrets if path]
    paths = [build_dir, cache_dir, *(path for _, path in files)]
    got = probe(user, paths)
    problems = []
    if got[0][1] != "x":
        problems.append(
            f"it cannot reach --build-dir {build_dir} (every parent directory needs o+x)"
        )
    if got[1] != "--":
        problems.append(f"it can enter --cache-dir {cache_dir} (chmod 700 it)")
    for (flag, path), mode in zip(files, got[2:], strict=True):
        if mode[0] == "r":
            problems.append(f"it can read {flag} {path} (make it readable by the worker only)")
    if problems:
        raise ConfigError(f"--run-as {user}: " + "; ".join(problems))
