"""Actions whose platform names a `container-image`: the exact runtime command the
executor builds, the refusal without --container-runtime, and (where podman can run
containers on this machine) real actions in an image imported from a local root file
system, since no registry is reachable."""

from __future__ import annotations

import asyncio
import os
import pwd
import secrets
import shutil
import subprocess
import tarfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import test_run_as
from google.rpc import code_pb2
from worker_fakes import Cluster, FakeScheduler, FakeStorage, Tree, make_action, start_server

from redbarn.errors import InvalidArgument
from redbarn.proto import remote_execution_pb2 as re_pb2
from redbarn.worker.cli import serve
from redbarn.worker.config import WorkerConfig
from redbarn.worker.executors.container import ContainerLaunch, container_image
from redbarn.worker.runas import ActionUser
from redbarn.worker.runner import RunSpec

# The --run-as test's fixtures: a user created for the test, a directory it can reach.
action_user = test_run_as.action_user
shared_tmp = test_run_as.shared_tmp


def _platform(**props: str) -> re_pb2.Platform:
    return re_pb2.Platform(
        properties=[re_pb2.Platform.Property(name=k, value=v) for k, v in props.items()]
    )


def test_runtime_command_is_exact() -> None:
    launch = ContainerLaunch("/usr/bin/podman", "registry.example/tools:1.2")
    spec = RunSpec(
        ["cc", "-c", "a b.c"],
        {"PATH": "/bin", "TMPDIR": "/b/x/tmp", "HOME": "/b/x/home", "A": "x\ny"},
        "/b/x/root/src",
        ActionUser("builder", 1234, 5678),
        ("/b/x/root", "/b/x/tmp", "/b/x/home"),
    )
    wrapped = launch.wrap(spec)
    assert launch.name.startswith("redbarn-")
    assert list(wrapped.arguments) == [
        "/usr/bin/podman", "run", "--rm", "--name", launch.name, "--network=none",
        "--user", "1234:5678",
        "--volume", "/b/x/root:/b/x/root",
        "--volume", "/b/x/tmp:/b/x/tmp",
        "--volume", "/b/x/home:/b/x/home",
        "--workdir", "/b/x/root/src",
        "--env", "A=x\ny", "--env", "HOME=/b/x/home", "--env", "PATH=/bin",
        "--env", "TMPDIR=/b/x/tmp",
        "registry.example/tools:1.2", "cc", "-c", "a b.c",
    ]  # fmt: skip
    # The runtime itself runs as the worker, in the worker's environment.
    assert wrapped.user is None
    assert dict(wrapped.environment) == dict(os.environ)


def test_without_run_as_the_container_user_is_the_workers() -> None:
    spec = RunSpec(["true"], {}, "/r", None, ("/r",))
    argv = list(ContainerLaunch("docker", "img").wrap(spec).arguments)
    assert argv[argv.index("--user") + 1] == f"{os.getuid()}:{os.getgid()}"


def test_container_image_property() -> None:
    assert container_image(_platform(OSFamily="linux")) is None
    assert container_image(_platform(**{"container-image": "docker://ubuntu:22.04"})) == (
        "ubuntu:22.04"
    )
    assert container_image(_platform(**{"container-image": "ubuntu"})) == "ubuntu"
    for bad in ("docker://", "--privileged", "a b"):
        with pytest.raises(InvalidArgument, match="container-image"):
            container_image(_platform(**{"container-image": bad}))
    twice = re_pb2.Platform(
        properties=[
            re_pb2.Platform.Property(name="container-image", value="a"),
            re_pb2.Platform.Property(name="container-image", value="b"),
        ]
    )
    with pytest.raises(InvalidArgument, match="given 2 times"):
        container_image(twice)


async def _run_in(
    cluster: Cluster, image: str, arguments: list[str], **kwargs: object
) -> re_pb2.ExecuteResponse:
    _, action = make_action(cluster.storage, arguments, **kwargs)  # type: ignore[arg-type]
    action.platform.CopyFrom(_platform(**{"container-image": image}))
    a = cluster.scheduler.submit(cluster.storage.put_message(action), action)
    return await asyncio.wait_for(a.result, 60)


async def test_refused_without_a_runtime(cluster: Cluster) -> None:
    resp = await _run_in(cluster, "docker://ubuntu:22.04", ["true"])
    assert resp.status.code == code_pb2.FAILED_PRECONDITION, resp.status
    assert "container-image" in resp.status.message
    assert "--container-runtime" in resp.status.message
    assert cluster.storage.ac == {}


# -- a real runtime ---------------------------------------------------------------------

TOOLS = ["/bin/sh", "/bin/cat", "/usr/bin/env", "/bin/sleep", "/usr/bin/id", "/bin/ls"]
# Where Debian's podman cannot use its defaults (crun refusing a hybrid cgroup layout,
# default ulimits above this machine's hard limits), a containers.conf of the test's own.
CONTAINERS_CONF = """\
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]
[engine]
runtime = "runc"
"""


def _rootfs_tar(path: Path) -> None:
    """A root file system of a few host binaries and the libraries they load."""
    files: set[str] = set()
    for tool in TOOLS:
        files.add(tool)
        ldd = subprocess.run(["ldd", tool], capture_output=True, text=True, check=True).stdout
        files.update(w for w in ldd.split() if w.startswith("/"))
    with tarfile.open(path, "w") as tar:
        for f in sorted(files):
            tar.add(os.path.realpath(f), arcname=f.lstrip("/"))


def _podman_or_skip(tmp: Path) -> tuple[str, dict[str, str]]:
    podman = shutil.which("podman")
    if podman is None:
        pytest.skip("podman is not installed")
    return podman, {"CONTAINERS_CONF": str(tmp / "containers.conf")}


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, str]]]:
    """A local image tag, and the environment podman needs here; skips the tests when
    podman cannot run a container on this machine (saying why)."""
    tmp = tmp_path_factory.mktemp("podman")
    podman, env = _podman_or_skip(tmp)
    (tmp / "containers.conf").write_text(
        CONTAINERS_CONF if shutil.which("runc") else CONTAINERS_CONF.split("[engine]")[0]
    )
    env = {**os.environ, **env}
    tag = f"localhost/redbarn-test-{secrets.token_hex(4)}:latest"
    _rootfs_tar(tmp / "rootfs.tar")
    subprocess.run([podman, "import", str(tmp / "rootfs.tar"), tag], env=env,
                   capture_output=True, check=True, timeout=300)  # fmt: skip
    try:
        probe = subprocess.run(
            [podman, "run", "--rm", "--network=none", tag, "/bin/sh", "-c", "echo ok"],
            env=env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        if probe.stdout != "ok\n":
            pytest.skip(f"podman cannot run a container here: {probe.stderr.strip()}")
        yield tag, env
    finally:
        subprocess.run([podman, "rmi", "--force", tag], env=env, capture_output=True)


@pytest.fixture
async def podman_cluster(
    tmp_path: Path,
    image: tuple[str, dict[str, str]],
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
) -> AsyncIterator[Cluster]:
    """A worker with --container-runtime podman; with `run_as` (indirect parameter: a
    fixture giving a user name) also --run-as, its build directory where that user
    can reach it."""
    _, env = image
    monkeypatch.setenv("CONTAINERS_CONF", env["CONTAINERS_CONF"])
    run_as = ""
    build = tmp_path / "build"
    if getattr(request, "param", None):
        run_as = request.getfixturevalue("action_user").pw_name
        build = request.getfixturevalue("shared_tmp") / "build"
    storage, scheduler = FakeStorage(), FakeScheduler()
    server, port = await start_server(storage, scheduler)
    config = WorkerConfig(
        frontend=f"127.0.0.1:{port}",
        concurrency=1,
        build_dir=str(build),
        cache_dir=str(tmp_path / "cache"),
        hostname="podman",
        backoff_max=0.2,
        container_runtime="podman",
        run_as=run_as,
    )
    shutdown = asyncio.Event()
    worker = asyncio.create_task(serve(config, shutdown))
    c = Cluster(storage, scheduler, config, port, server, shutdown, worker, tmp_path)
    try:
        yield c
    finally:
        shutdown.set()
        try:
            await asyncio.wait_for(worker, 30)
        finally:
            await server.stop(None)


@pytest.mark.system
async def test_action_runs_in_the_image(
    podman_cluster: Cluster, image: tuple[str, dict[str, str]]
) -> None:
    script = (
        "cat in/data; id -u; ls /usr/bin; echo made > out/o; echo tmp > $TMPDIR/t; "
        "cat $TMPDIR/t; env"
    )
    resp = await _run_in(
        podman_cluster, f"docker://{image[0]}", ["sh", "-c", script],
        tree=Tree(files={"in/data": (b"input\n", False)}), output_paths=["out/o"],
    )  # fmt: skip
    assert resp.status.code == code_pb2.OK, resp.status
    assert resp.result.exit_code == 0, podman_cluster.storage.get(resp.result.stderr_digest)
    out = podman_cluster.storage.get(resp.result.stdout_digest).decode().splitlines()
    assert out[:2] == ["input", str(os.getuid())]
    assert out[2:4] == ["env", "id"]  # the image's /usr/bin, not the host's
    assert out[4] == "tmp"
    env = dict(line.split("=", 1) for line in out[5:])
    assert env["TMPDIR"].startswith(podman_cluster.config.build_dir + "/")
    assert env["PATH"] == "/usr/bin:/bin"  # the Command's
    # Podman adds a few of its own, sh its PWD; nothing of the worker's environment.
    assert set(env) - {"container", "HOSTNAME", "TERM", "PWD"} == {"PATH", "TMPDIR", "HOME"}
    files = {f.path: podman_cluster.storage.get(f.digest) for f in resp.result.output_files}
    assert files == {"out/o": b"made\n"}


@pytest.mark.system
async def test_timeout_kills_and_removes_the_container(
    podman_cluster: Cluster, image: tuple[str, dict[str, str]]
) -> None:
    podman, env = shutil.which("podman"), image[1]
    assert podman is not None
    resp = await _run_in(podman_cluster, image[0], ["sleep", "300"], timeout=3.0)
    assert resp.status.code == code_pb2.DEADLINE_EXCEEDED, resp.status
    ps = await asyncio.to_thread(
        subprocess.run,
        [podman, "ps", "--all", "--filter", "name=redbarn-", "--format", "{{.Names}}"],
        env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert ps.stdout == ""


@pytest.mark.system
@pytest.mark.skipif(os.geteuid() != 0, reason="--run-as needs root to create a user")
@pytest.mark.parametrize("podman_cluster", ["run_as"], indirect=True)
async def test_container_runs_as_the_run_as_user(
    podman_cluster: Cluster, image: tuple[str, dict[str, str]], action_user: pwd.struct_passwd
) -> None:
    script = "id -u; id -g; cat in/data; (echo x > in/data) 2>/dev/null || echo refused; : > o"
    resp = await _run_in(
        podman_cluster, image[0], ["sh", "-c", script],
        tree=Tree(files={"in/data": (b"input\n", False)}), output_paths=["o"],
    )  # fmt: skip
    assert resp.status.code == code_pb2.OK, resp.status
    out = podman_cluster.storage.get(resp.result.stdout_digest).decode().split()
    assert out == [str(action_user.pw_uid), str(action_user.pw_gid), "input", "refused"]
    assert [f.path for f in resp.result.output_files] == ["o"]
