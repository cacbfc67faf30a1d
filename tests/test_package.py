"""The package works wherever it is installed: a wheel built from the repository, installed
into a fresh virtual environment, lists its models and annotates from another directory.

The wheel is built from a copy of the tracked files (so nothing of the checkout's own
build state leaks in) and installed with --no-deps; its dependencies come from the test
environment through a .pth line, the one way to run it without a network. That line adds
the dependencies' folder only: the checkout's editable install (a .pth hook there) is not
run, so `fer_batch` can only come from the wheel.
"""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
from pathlib import Path

import pytest

from tests.media import astronaut

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
UV = REPO / ".tools" / "bin" / "uv"


def _run(args: list[str], cwd: Path, **kwargs) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "PYTHONPATH")}
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, **kwargs)
    assert done.returncode == 0, (args, done.stdout[-3000:], done.stderr[-3000:])
    return done


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    if not UV.exists():
        pytest.skip(f"needs uv at {UV} (make setup installs it)")
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("needs a git checkout to know the tracked files")
    root = tmp_path_factory.mktemp("package")
    src = root / "src"
    tracked = _run(["git", "ls-files", "-z"], REPO).stdout.split("\0")
    for name in filter(None, tracked):
        source, target = REPO / name, src / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_symlink():
            target.symlink_to(os.readlink(source))
        elif source.exists():
            shutil.copy2(source, target)
    _run([str(UV), "build", "--wheel", "--no-build-isolation", "--python", sys.executable,
          "--out-dir", str(root / "dist"), str(src)], root)
    (wheel,) = (root / "dist").glob("fer_batch-*.whl")
    env = root / "env"
    _run([str(UV), "venv", "--python", sys.executable, str(env)], root)
    python = env / "bin" / "python"
    _run([str(UV), "pip", "install", "--python", str(python), "--no-deps", "--offline",
          str(wheel)], root)
    packages = Path(_run([str(python), "-c", "import sysconfig; "
                          "print(sysconfig.get_paths()['purelib'])"], root).stdout.strip())
    (packages / "_test_dependencies.pth").write_text(site.getsitepackages()[0] + "\n")
    return env


def test_the_wheel_holds_the_registry_and_runs_from_anywhere(installed, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = _run([str(installed / "bin" / "python"), "-c",
                  "import fer_batch, fer_batch.registry as r; "
                  "print(fer_batch.__file__); print(r.REGISTRY_FILE)"], elsewhere).stdout.split()
    assert all(p.startswith(str(installed)) for p in where), where
    listed = _run([str(installed / "bin" / "fer-batch"), "models"], elsewhere).stdout
    assert "fer-mini-xception" in listed
    photos = elsewhere / "photos"
    photos.mkdir()
    astronaut().save(photos / "astronaut.png")
    out = elsewhere / "out"
    _run([str(installed / "bin" / "fer-batch"), "annotate", "photos", "--output", "out",
          "--no-progress"], elsewhere, timeout=600)
    record = json.loads((out / "_run.json").read_text())
    assert record["counts"]["ok"] == 1 and record["counts"]["faces"] == 1, record["counts"]
