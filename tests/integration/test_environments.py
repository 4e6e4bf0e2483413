"""Environments of their own made from a lock and a wheelhouse the test builds, with no network: made once, recorded,
reused while the lock is unchanged, never used half-made."""

import subprocess
import sys
from pathlib import Path

import pytest

from agent.provision import venv


@pytest.fixture(scope="module")
def wheelhouse(tmp_path_factory) -> Path:
    """Two versions of a one-module package, built here into wheels (offline: the build uses this env's setuptools)."""
    base = tmp_path_factory.mktemp("wheelhouse")
    for version in ("0.1.0", "0.2.0"):
        src = base / f"src-{version}"
        (src / "tinypkg").mkdir(parents=True)
        (src / "tinypkg" / "__init__.py").write_text(f"VERSION = {version!r}\n")
        (src / "pyproject.toml").write_text(
            f'[build-system]\nrequires = ["setuptools"]\nbuild-backend = "setuptools.build_meta"\n'
            f'[project]\nname = "tinypkg"\nversion = "{version}"\n'
        )
        build = ["wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(base / "wheels"), str(src)]
        subprocess.run([sys.executable, "-m", "pip", *build], check=True, capture_output=True)
    return base / "wheels"


def lock(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_an_environment_is_made_from_a_lock_offline_then_reused(wheelhouse, tmp_path):
    first = venv.ensure(lock(tmp_path / "a.lock", "tinypkg==0.1.0\n"), tmp_path / "envs", wheelhouse)
    assert not first.reused and "tinypkg==0.1.0" in first.freeze
    said = subprocess.run([str(first.python), "-c", "import tinypkg; print(tinypkg.VERSION)"], capture_output=True, text=True)
    assert said.stdout.strip() == "0.1.0"
    stamp = (first.path / "freeze.txt").stat().st_mtime_ns
    again = venv.ensure(tmp_path / "a.lock", tmp_path / "envs", wheelhouse)
    assert again.reused and again.path == first.path and (first.path / "freeze.txt").stat().st_mtime_ns == stamp
    newer = venv.ensure(lock(tmp_path / "b.lock", "tinypkg==0.2.0\n"), tmp_path / "envs", wheelhouse)
    assert not newer.reused and newer.path != first.path and "tinypkg==0.2.0" in newer.freeze


def test_a_lock_the_wheelhouse_cannot_satisfy_leaves_nothing_half_made(wheelhouse, tmp_path):
    bad = lock(tmp_path / "bad.lock", "tinypkg==9.9.9\n")
    with pytest.raises(venv.EnvironmentFailed, match=r"(?s)bad.lock failed.*No matching distribution found for tinypkg==9.9.9"):
        venv.ensure(bad, tmp_path / "envs", wheelhouse)
    assert not any(p.name.startswith("env-") for p in (tmp_path / "envs").iterdir())
    # A half-made one (killed before its freeze.txt) is made again, not used.
    good = lock(tmp_path / "good.lock", "tinypkg==0.1.0\n")
    half = tmp_path / "envs" / f"env-{__import__('hashlib').sha256(good.read_bytes()).hexdigest()[:16]}"
    (half / "bin").mkdir(parents=True)
    made = venv.ensure(good, tmp_path / "envs", wheelhouse)
    assert made.path == half and not made.reused and (half / "bin" / "python").exists()


def test_an_environment_over_another_sees_its_packages_behind_its_own(wheelhouse, tmp_path):
    base = venv.ensure(lock(tmp_path / "base.lock", "tinypkg==0.1.0\n"), tmp_path / "envs", wheelhouse)
    base_site = next((base.path / "lib").glob("python*/site-packages"))
    over = venv.ensure(lock(tmp_path / "over.lock", "tinypkg==0.2.0\n"), tmp_path / "envs", wheelhouse, extends=base_site)
    probe = f"import sys, tinypkg; print(tinypkg.VERSION, any(p.startswith({str(base_site)!r}) for p in sys.path))"
    said = subprocess.run([str(over.python), "-c", probe], capture_output=True, text=True)
    assert said.stdout.split() == ["0.2.0", "True"], said.stderr  # its own pin first, the base behind it
    again = venv.ensure(tmp_path / "over.lock", tmp_path / "envs", wheelhouse, extends=tmp_path / "elsewhere")
    assert not again.reused and again.path != over.path  # the same lock over another base is another environment
