"""Drive Bazel 4.2.3 (Debian's bazel-bootstrap) over the e2e workspace, offline.

Used by tests/e2e/test_bazel_e2e.py, and runnable by hand:

    python tests/e2e/bazel.py local
    python tests/e2e/bazel.py remote grpc://127.0.0.1:8981 [--instance-name X] [--exec-property K=V]...

Every invocation gets:
  * startup: a private --output_user_root (no state shared with other runs or users),
    --nohome_rc, and --max_idle_secs so a forgotten server goes away by itself;
  * command: --nosandbox_debug (Debian's /etc/bazel/bazelrc turns it on),
    --symlink_prefix=/ (no bazel-* symlinks in the source tree),
    --override_repository for each stand-in under tests/e2e/standins/ (no downloads),
    --incompatible_strict_action_env (the same action keys whatever the caller's PATH).

Remote runs add --remote_executor (plus --remote_instance_name and
--remote_default_exec_properties when given), --spawn_strategy=remote and
--noremote_local_fallback, so an action that cannot run remotely fails instead of
quietly running here. The process summary Bazel prints last
("INFO: 25 processes: 10 internal, 15 remote.") is parsed and checked.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent.parent
WORKSPACE = HERE / "workspace"
STANDINS_DIR = HERE / "standins"
INSTALL_SCRIPT = REPO_ROOT / "scripts" / "install-bazel"

# Implicit repositories of Bazel 4.2.3 that would otherwise be downloaded.
STANDINS = ("rules_cc", "rules_java", "remote_coverage_tools")

# What `bin` prints for joined.txt, and what //:run_bin captures.
EXPECTED_BIN_OUTPUT = "hello from redbarn, 5 lines"

_SUMMARY_RE = re.compile(r"^INFO: (\d+) process(?:es)?(?:: (.*?))?\.\s*$", re.MULTILINE)


class BazelError(AssertionError):
    """A Bazel run or one of its checks failed; the message carries Bazel's output."""


def find_bazel(install: bool = False) -> str | None:
    """Path of `bazel`; with install=True run scripts/install-bazel when it is missing."""
    found = shutil.which("bazel")
    if found or not install:
        return found
    proc = subprocess.run(
        ["bash", str(INSTALL_SCRIPT)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=900,
    )
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
        return None
    return shutil.which("bazel")


@dataclass
class Summary:
    """Bazel's process summary: total count and count per kind ("remote", "internal", ...)."""

    total: int
    kinds: dict[str, int] = field(default_factory=dict)

    @classmethod
    def parse(cls, output: str) -> Summary:
        matches = list(_SUMMARY_RE.finditer(output))
        if not matches:
            raise BazelError("no process summary line in Bazel's output:\n" + output[-6000:])
        m = matches[-1]
        kinds: dict[str, int] = {}
        for part in (m.group(2) or "").split(", "):
            if part:
                count, kind = part.split(" ", 1)
                kinds[kind] = kinds.get(kind, 0) + int(count)
        return cls(int(m.group(1)), kinds)

    def only(self, allowed: Iterable[str]) -> bool:
        return set(self.kinds) <= set(allowed)


@dataclass
class Run:
    args: list[str]
    returncode: int
    output: str
    seconds: float

    @property
    def summary(self) -> Summary:
        return Summary.parse(self.output)

    def check(self) -> Run:
        if self.returncode != 0:
            raise BazelError(
                f"bazel exited {self.returncode} after {self.seconds:.1f}s: "
                f"{' '.join(self.args)}\n{self.output[-8000:]}"
            )
        return self


def remote_flags(
    executor: str,
    *,
    accept_cached: bool = True,
    instance_name: str = "",
    exec_properties: Mapping[str, str] | None = None,
) -> list[str]:
    flags = [
        f"--remote_executor={executor}",
        "--spawn_strategy=remote",
        "--noremote_local_fallback",
        "--remote_timeout=120",
    ]
    if not accept_cached:
        flags.append("--noremote_accept_cached")
    if instance_name:
        flags.append(f"--remote_instance_name={instance_name}")
    for key, value in (exec_properties or {}).items():
        flags.append(f"--remote_default_exec_properties={key}={value}")
    return flags


class Bazel:
    """One Bazel server with a private output root, over the e2e workspace."""

    def __init__(
        self,
        output_user_root: Path | None = None,
        bazel: str | None = None,
        workspace: Path = WORKSPACE,
    ) -> None:
        self.bazel = bazel or find_bazel() or "bazel"
        self._tmp: str | None = None
        if output_user_root is None:
            self._tmp = tempfile.mkdtemp(prefix="redbarn-bazel-")
            output_user_root = Path(self._tmp)
        self.output_user_root = Path(output_user_root)
        self.workspace = Path(workspace)

    # -- flags ---------------------------------------------------------------

    def startup_flags(self) -> list[str]:
        return [
            f"--output_user_root={self.output_user_root}",
            "--nohome_rc",
            "--max_idle_secs=300",
        ]

    @staticmethod
    def common_flags() -> list[str]:
        flags = [
            "--nosandbox_debug",
            "--symlink_prefix=/",
            "--incompatible_strict_action_env",
            "--color=no",
            "--curses=no",
            "--show_progress_rate_limit=5",
        ]
        flags += [f"--override_repository={name}={STANDINS_DIR / name}" for name in STANDINS]
        return flags

    # -- commands ------------------------------------------------------------

    def run(self, command: str, *args: str, timeout: float = 600) -> Run:
        argv = [self.bazel, *self.startup_flags(), command, *args]
        env = dict(os.environ)
        env.pop("BAZELISK_SKIP_WRAPPER", None)
        start = time.monotonic()
        try:
            proc = subprocess.run(
                argv,
                cwd=self.workspace,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                timeout=timeout,
            )
        except subprocess.TimeoutExpired as e:
            out = (
                e.output
                if isinstance(e.output, str)
                else (e.output or b"").decode(errors="replace")
            )
            raise BazelError(
                f"bazel timed out after {timeout}s: {' '.join(argv)}\n{out[-8000:]}"
            ) from e
        return Run(argv, proc.returncode, proc.stdout, time.monotonic() - start)

    def test(self, *extra: str, targets: Sequence[str] = ("//...",), timeout: float = 600) -> Run:
        return self.run(
            "test", *self.common_flags(), "--test_output=errors", *extra, *targets, timeout=timeout
        )

    def build(self, *extra: str, targets: Sequence[str] = ("//...",), timeout: float = 600) -> Run:
        return self.run("build", *self.common_flags(), *extra, *targets, timeout=timeout)

    def clean(self) -> Run:
        return self.run("clean", "--color=no", "--curses=no", timeout=120).check()

    def bazel_bin(self) -> Path:
        r = self.run("info", *self.common_flags(), "bazel-bin", timeout=120).check()
        return Path(r.output.strip().splitlines()[-1])

    def shutdown(self) -> None:
        with contextlib.suppress(BazelError):
            self.run("shutdown", timeout=60)

    def close(self) -> None:
        """Stop the server and delete a private output root made by __init__."""
        self.shutdown()
        if self._tmp:
            # Bazel makes parts of the output base read-only.
            subprocess.run(["chmod", "-R", "u+w", self._tmp], check=False, capture_output=True)
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    def __enter__(self) -> Bazel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- checks --------------------------------------------------------------

    def check_binary_output(self) -> None:
        """Run the built `bin` here on joined.txt, and read what //:run_bin captured."""
        bin_dir = self.bazel_bin()
        proc = subprocess.run(
            [str(bin_dir / "bin"), str(bin_dir / "joined.txt")],
            capture_output=True,
            text=True,
            timeout=30,
        )
        if proc.returncode != 0 or proc.stdout.strip() != EXPECTED_BIN_OUTPUT:
            raise BazelError(
                f"bin printed {proc.stdout!r} (exit {proc.returncode}, stderr {proc.stderr!r})"
            )
        captured = (bin_dir / "bin_output.txt").read_text().strip()
        if captured != EXPECTED_BIN_OUTPUT:
            raise BazelError(f"//:run_bin captured {captured!r}")


def expect_processes(run: Run, required: str, allowed: Iterable[str]) -> Summary:
    """Check the summary: some `required` processes and none outside `allowed`."""
    summary = run.summary
    if not summary.only(allowed) or summary.kinds.get(required, 0) == 0:
        raise BazelError(
            f"expected only {sorted(set(allowed))} processes with some {required!r}, got "
            f"{summary.kinds} (total {summary.total})\n{run.output[-6000:]}"
        )
    return summary


@dataclass
class E2EReport:
    remote: Run
    cached: Run

    def describe(self) -> str:
        return (
            f"remote execution: {self.remote.summary.kinds} in {self.remote.seconds:.1f}s; "
            f"after clean: {self.cached.summary.kinds} in {self.cached.seconds:.1f}s"
        )


def local_e2e(bazel: Bazel) -> Run:
    """`bazel test //...` with local (sandboxed) execution only, then check `bin`."""
    run = bazel.test().check()
    bazel.check_binary_output()
    return run


def remote_e2e(
    bazel: Bazel,
    executor: str,
    *,
    instance_name: str = "",
    exec_properties: Mapping[str, str] | None = None,
) -> E2EReport:
    """The issue's steps 2 and 3 against `executor` (e.g. grpc://127.0.0.1:8981).

    2. `bazel test //...` with --noremote_accept_cached: every non-internal process is
       `remote`; the tests pass; the binary's output is right.
    3. `bazel clean`, then the same with the remote cache: every non-internal process
       is a `remote cache hit`.
    Starts with `bazel clean` so a Bazel that has built before still runs every action.
    """
    kw = {"instance_name": instance_name, "exec_properties": exec_properties}
    bazel.clean()
    remote = bazel.test(*remote_flags(executor, accept_cached=False, **kw)).check()  # type: ignore[arg-type]
    expect_processes(remote, "remote", {"remote", "internal"})
    bazel.check_binary_output()

    bazel.clean()
    cached = bazel.test(*remote_flags(executor, **kw)).check()  # type: ignore[arg-type]
    expect_processes(cached, "remote cache hit", {"remote cache hit", "internal"})
    bazel.check_binary_output()
    return E2EReport(remote, cached)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the Bazel e2e workspace.")
    sub = parser.add_subparsers(dest="mode", required=True)
    sub.add_parser("local", help="offline local build and test")
    rp = sub.add_parser("remote", help="remote execution, then remote cache hits after a clean")
    rp.add_argument("executor", help="e.g. grpc://127.0.0.1:8981")
    rp.add_argument("--instance-name", default="")
    rp.add_argument("--exec-property", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument(
        "--output-user-root", type=Path, help="default: a fresh temporary directory"
    )
    args = parser.parse_args(argv)

    bazel_path = find_bazel(install=True)
    if not bazel_path:
        print("bazel is missing and scripts/install-bazel failed", file=sys.stderr)
        return 1
    with Bazel(args.output_user_root, bazel_path) as bazel:
        try:
            if args.mode == "local":
                run = local_e2e(bazel)
                print(f"local: {run.summary.kinds} in {run.seconds:.1f}s")
            else:
                props = dict(p.split("=", 1) for p in args.exec_property)
                report = remote_e2e(
                    bazel, args.executor, instance_name=args.instance_name, exec_properties=props
                )
                print(report.describe())
        except BazelError as err:
            print(err, file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
