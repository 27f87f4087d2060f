"""The package stays ruff- and mypy-clean (both come with the `test` extra)."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _run(*args):
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_ruff_clean():
    if shutil.which("ruff") is None and _run("ruff", "--version").returncode != 0:
        pytest.fail("ruff is not installed (pip install -e '.[test]')")
    r = _run("ruff", "check", "src", "tests")
    assert r.returncode == 0, r.stdout + r.stderr


def test_mypy_clean():
    r = _run("mypy", "--ignore-missing-imports", "src/cxcache")
    assert r.returncode == 0, r.stdout + r.stderr
