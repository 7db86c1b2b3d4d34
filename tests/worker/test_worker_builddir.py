"""Build directories: leftovers of a killed worker (files and processes) are removed."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from redbarn.errors import FailedPrecondition
from redbarn.worker import builddir


def test_restart_kills_orphans_and_removes_leftovers(tmp_path: Path) -> None:
    build = tmp_path / "build"
    action = build / "abc-123" / "root"
    action.mkdir(parents=True)
    (action / "ro").mkdir()
    (action / "ro" / "f").write_text("x")
    os.chmod(action / "ro", 0o500)
    orphan = subprocess.Popen(["sleep", "300"], cwd=action, start_new_session=True)
    bystander = subprocess.Popen(["sleep", "300"], cwd=tmp_path)
    try:
        assert builddir.kill_leftovers(str(build)) == 1
        assert orphan.wait(timeout=10) == -9
        assert bystander.poll() is None
        builddir.clean(str(build))
        assert os.listdir(build) == []
    finally:
        for p in (orphan, bystander):
            p.kill()
            p.wait()


def test_lock_is_exclusive(tmp_path: Path) -> None:
    fd = builddir.lock(str(tmp_path))
    try:
        with pytest.raises(FailedPrecondition):
            builddir.lock(str(tmp_path))
    finally:
        os.close(fd)
    os.close(builddir.lock(str(tmp_path)))  # free again once released
