"""compose.yaml and the nginx template, read as configuration: the production shape is
closed (no Synchronize without a worker token on any published port, workers on an
internal network, tokens from compose secrets), the CAS has its own bounded Redis, and
the load balancer's limits agree with the frontends' defaults.

Docker is not run here; these tests read the files as compose and nginx would.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from redbarn.config import GiB, MiB
from redbarn.frontend.config import MESSAGE_HEADROOM, FrontendConfig
from redbarn.queue.config import SchedulerConfig

yaml = pytest.importorskip("yaml")  # PyYAML: in the dev extra

REPO = Path(__file__).resolve().parents[1]
COMPOSE = REPO / "compose.yaml"
TEMPLATE = REPO / "deploy" / "nginx.conf.template"
SECRETS = "/run/secrets/"


def _compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return loaded


def _services() -> dict[str, dict[str, Any]]:
    services: dict[str, dict[str, Any]] = _compose()["services"]
    return services


def _flag(command: list[str], flag: str) -> str | None:
    """The value of `flag` in an argv list (`--flag value` or `--flag=value`)."""
    for i, arg in enumerate(command):
        if arg == flag and i + 1 < len(command):
            return command[i + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    return None


def _port(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


def _frontends() -> dict[str, dict[str, Any]]:
    return {n: s for n, s in _services().items() if s["command"][0] == "frontend"}


def _networks(service: dict[str, Any]) -> list[str]:
    networks = service.get("networks", [])
    return list(networks) if isinstance(networks, (list, dict)) else []


def test_every_frontend_requires_tokens_from_secrets() -> None:
    frontends = _frontends()
    assert len(frontends) == 3
    declared = _compose()["secrets"]
    for name, service in frontends.items():
        command = service["command"]
        for flag in ("--client-tokens", "--worker-tokens", "--admin-tokens"):
            path = _flag(command, flag)
            assert path is not None and path.startswith(SECRETS), (name, flag)
            secret = path.removeprefix(SECRETS)
            assert secret in service["secrets"], (name, secret)
            assert declared[secret]["file"].startswith("./deploy/secrets/"), secret


def test_synchronize_is_served_only_on_the_unpublished_worker_listener() -> None:
    """Every frontend has a worker listener (so its client listener serves no
    Synchronize); no service publishes or exposes a frontend port; the only published
    port is the LB's, and it forwards to the client listeners."""
    services = _services()
    client_ports, worker_ports = set(), set()
    for name, service in _frontends().items():
        command = service["command"]
        listen, worker_listen = _flag(command, "--listen"), _flag(command, "--worker-listen")
        assert listen and worker_listen, name
        assert _port(listen) != _port(worker_listen)
        client_ports.add(_port(listen))
        worker_ports.add(_port(worker_listen))
        assert "ports" not in service and "expose" not in service, name
        assert service.get("network_mode") is None, name
    published = {n: s["ports"] for n, s in services.items() if "ports" in s}
    assert list(published) == ["lb"]
    for mapping in published["lb"]:
        container_port = int(str(mapping).rsplit(":", 1)[-1].split("/")[0])
        assert container_port not in worker_ports
    upstreams = {v for k, v in services["lb"]["environment"].items() if k.startswith("FRONTEND_")}
    assert upstreams == {f"{n}:{p}" for n in _frontends() for p in client_ports}


def test_workers_reach_the_worker_listener_on_an_internal_network_with_a_token() -> None:
    compose = _compose()
    worker = _services()["worker"]
    command = worker["command"]
    target = _flag(command, "--frontend")
    assert target is not None
    host_port = target.removeprefix("dns:///")
    host, port = host_port.rsplit(":", 1)
    token_file = _flag(command, "--token-file")
    assert token_file == SECRETS + "worker-token"
    assert "worker-token" in worker["secrets"]
    networks = _networks(worker)
    assert networks, "the worker must name its networks"
    for network in networks:
        assert compose["networks"][network].get("internal") is True, network
    # The name it dials is each frontend's alias on that network, at the worker port.
    for name, service in _frontends().items():
        assert int(port) == _port(_flag(service["command"], "--worker-listen") or ""), name
        nets = service["networks"]
        assert any(host in (nets[n] or {}).get("aliases", []) for n in networks), name
    # The LB is not on the workers' network: Synchronize never passes through it.
    assert not set(_networks(_services()["lb"])) & set(networks)


def test_redis_servers_sit_on_an_internal_network() -> None:
    compose = _compose()
    for name in ("redis", "cas-redis"):
        service = _services()[name]
        assert "ports" not in service
        for network in _networks(service):
            assert compose["networks"][network].get("internal") is True, (name, network)


def _redis_args(name: str) -> dict[str, str]:
    command = _services()[name]["command"]
    assert command[0] == "redis-server"
    args = command[1:]
    return {args[i].removeprefix("--"): str(args[i + 1]) for i in range(0, len(args), 2)}


def test_scheduler_redis_never_evicts_and_keeps_an_aof() -> None:
    args = _redis_args("redis")
    assert args["maxmemory-policy"] == "noeviction"
    assert args["appendonly"] == "yes"


def test_cas_redis_is_bounded_and_evicts_least_recently_used() -> None:
    args = _redis_args("cas-redis")
    assert args["maxmemory-policy"] == "allkeys-lru"
    assert re.fullmatch(r"\$\{REDBARN_CAS_MAXMEMORY:-\d+[kmg]b\}", args["maxmemory"])
    assert args["appendonly"] == "no"
    for name, service in _frontends().items():
        cas = _flag(service["command"], "--cas-redis")
        assert cas == "redis://cas-redis:6379/0", name
        assert cas != _flag(service["command"], "--redis")


def test_secrets_are_not_committed() -> None:
    tracked = subprocess.run(
        ["git", "ls-files", "deploy/secrets"], cwd=REPO, capture_output=True, text=True
    )
    if tracked.returncode != 0:
        pytest.skip("not a git checkout")
    assert tracked.stdout.split() == ["deploy/secrets/.gitignore"]
    assert (REPO / "deploy" / "make-secrets").stat().st_mode & 0o111


# ------------------------------------------------------------------ the nginx template

_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
_SIZES = {"": 1, "k": 1 << 10, "m": MiB, "g": GiB}


def _directives(block: str) -> dict[str, str]:
    """`name value;` lines of the template's `block` ("server" or "upstream")."""
    text = TEMPLATE.read_text()
    opening = re.search(rf"^\s*{block}(\s+\w+)?\s*\{{", text, re.MULTILINE)
    assert opening, block
    body = text[opening.end() :]
    depth, end = 1, 0
    while depth:
        depth += {"{": 1, "}": -1}.get(body[end], 0)
        end += 1
    found: dict[str, str] = {}
    for line in body[:end].splitlines():
        line = line.split("#", 1)[0].strip()
        if line.endswith(";") and " " in line:
            name, value = line[:-1].split(None, 1)
            found[name] = value
    return found


def _seconds(value: str) -> float:
    m = re.fullmatch(r"(\d+)([smhd]?)", value)
    assert m, value
    return int(m.group(1)) * _UNITS[m.group(2)]


def _bytes(value: str) -> int:
    m = re.fullmatch(r"(\d+)([kmg]?)", value.lower())
    assert m, value
    return int(m.group(1)) * _SIZES[m.group(2)]


def test_nginx_limits_agree_with_the_frontend_defaults() -> None:
    fe, sched = FrontendConfig(), SchedulerConfig()
    server = _directives("server")
    assert int(server["http2_max_concurrent_streams"]) == fe.grpc_max_concurrent_streams
    assert _seconds(server["keepalive_timeout"]) == fe.grpc_max_connection_idle
    # A ByteStream Write of the largest blob fits, with room for its framing.
    assert _bytes(server["client_max_body_size"]) >= fe.max_blob_size + MESSAGE_HEADROOM
    assert _bytes(server["client_max_body_size"]) >= fe.max_message_size
    # Quiet calls outlive their longest silence: a parked Synchronize, an Execute stream
    # between two updates.
    quiet = max(sched.idle_sync_timeout, sched.execution_update_interval)
    for directive in ("grpc_read_timeout", "grpc_send_timeout", "client_body_timeout"):
        assert _seconds(server[directive]) >= 2 * quiet, directive
    # nginx drops its idle upstream connections before a frontend would.
    upstream = _directives("upstream")
    assert _seconds(upstream["keepalive_timeout"]) < fe.grpc_max_connection_idle


def test_nginx_template_parses_as_nginx_config(tmp_path: Path) -> None:
    import shutil
    import string

    from redbarn.runtime.redisserver import free_port

    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    if not Path(nginx).exists():
        pytest.skip("nginx not installed")
    conf = string.Template(TEMPLATE.read_text()).substitute(
        FRONTEND_1="127.0.0.1:1", FRONTEND_2="127.0.0.1:2", FRONTEND_3="127.0.0.1:3",
        LB_LISTEN=f"127.0.0.1:{free_port()}", NGINX_LOG_DIR=str(tmp_path), NGINX_RUN_DIR=str(tmp_path),
    )  # fmt: skip
    (tmp_path / "nginx.conf").write_text(conf)
    check = subprocess.run(
        [nginx, "-t", "-c", str(tmp_path / "nginx.conf"), "-p", str(tmp_path)],
        capture_output=True,
        text=True,
    )
    assert check.returncode == 0, check.stderr


def test_readme_security_section_matches_compose() -> None:
    """The README's compose paragraph names the ports and the script compose really uses."""
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## Security") :]
    section = section[: section.index("\n## ", 1)]
    frontend = next(iter(_frontends().values()))["command"]
    assert f"(:{_port(_flag(frontend, '--worker-listen') or '')})" in section
    (published,) = _services()["lb"]["ports"]
    assert f"nginx on :{str(published).split(':')[0]}" in section.replace("\n  ", " ")
    assert "`deploy/make-secrets`" in section
    assert (REPO / "deploy" / "make-secrets").exists()
