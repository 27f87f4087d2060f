"""Generate the cxcache.v1 Python stubs from ../../proto with grpcio-tools.

Writes src/cxcache/v1/{cache_pb2.py,cache_pb2.pyi,cache_pb2_grpc.py,__init__.py}.
The output is gitignored: run this (or `pip install .`, whose build step calls it)
after changing the proto. It is a no-op when the outputs are newer than the
protos and were made by the same grpcio-tools version.

It also holds the version helpers setup.py uses: the version is read from the
repository's one version source, /VERSION (or, in an sdist, the copy at its root),
and written to src/cxcache/_version.py (gitignored too).

Usage: python build_protos.py [--force]
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROTO_ROOT = Path(os.environ.get("CXCACHE_PROTO_ROOT", HERE.parent.parent / "proto"))
OUT_ROOT = HERE / "src"
PROTO_FILES = ["cxcache/v1/cache.proto"]
OUTPUTS = ["cache_pb2.py", "cache_pb2.pyi", "cache_pb2_grpc.py"]
STAMP = ".generated-by"
VERSION_MODULE = OUT_ROOT / "cxcache" / "_version.py"


def version_file() -> Path:
    """The VERSION file: the sdist's copy at the package root, else the repository's."""
    for candidate in (HERE / "VERSION", HERE.parent.parent / "VERSION"):
        if candidate.is_file():
            return candidate
    raise SystemExit(f"VERSION not found (looked in {HERE} and {HERE.parent.parent})")


def project_version() -> str:
    text = version_file().read_text().strip()
    if not text or any(c.isspace() for c in text):
        raise SystemExit(f"{version_file()}: expected one version string, got {text!r}")
    return text


def write_version_module(version: str) -> None:
    """Write src/cxcache/_version.py (only when it changes, to keep mtimes stable)."""
    content = f'"""Generated from the repository\'s VERSION at build time. Do not edit."""\n\n__version__ = "{version}"\n'
    if not VERSION_MODULE.exists() or VERSION_MODULE.read_text() != content:
        VERSION_MODULE.parent.mkdir(parents=True, exist_ok=True)
        VERSION_MODULE.write_text(content)


def _out_dir() -> Path:
    return OUT_ROOT / "cxcache" / "v1"


def _tools_version() -> str:
    from importlib.metadata import version

    return "grpcio-tools " + version("grpcio-tools")


def up_to_date() -> bool:
    out = _out_dir()
    stamp = out / STAMP
    if not all((out / f).exists() for f in OUTPUTS + ["__init__.py"]):
        return False
    if not PROTO_ROOT.exists():  # building from an sdist: the stubs ship with it
        return True
    if not stamp.exists():
        return False
    if stamp.read_text().strip() != _tools_version():
        return False
    newest_src = max((PROTO_ROOT / p).stat().st_mtime for p in PROTO_FILES)
    return all((out / f).stat().st_mtime >= newest_src for f in OUTPUTS)


def generate(force: bool = False) -> bool:
    """Generate the stubs; returns True when files were (re)written."""
    if not force and up_to_date():
        return False
    if not PROTO_ROOT.exists():
        raise SystemExit(f"proto sources not found at {PROTO_ROOT}")
    from importlib.resources import files

    from grpc_tools import protoc

    wkt = str(files("grpc_tools") / "_proto")
    out = _out_dir()
    out.mkdir(parents=True, exist_ok=True)
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{wkt}",
        f"--python_out={OUT_ROOT}",
        f"--pyi_out={OUT_ROOT}",
        f"--grpc_python_out={OUT_ROOT}",
        *PROTO_FILES,
    ]
    rc = protoc.main(args)
    if rc != 0:
        raise SystemExit(f"grpc_tools.protoc failed with exit code {rc}")
    (out / "__init__.py").write_text('"""Generated cxcache.v1 stubs (grpcio-tools). Do not edit."""\n')
    (out / STAMP).write_text(_tools_version() + "\n")
    return True


if __name__ == "__main__":
    changed = generate(force="--force" in sys.argv[1:])
    write_version_module(project_version())
    print("cxcache: stubs generated" if changed else "cxcache: stubs up to date")
