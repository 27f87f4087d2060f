"""Generate the cxcache.v1 Python stubs from ../../proto with grpcio-tools.

Writes src/cxcache/v1/{cache_pb2.py,cache_pb2.pyi,cache_pb2_grpc.py,__init__.py}.
The output is gitignored: run this (or `pip install .`, whose build step calls it)
after changing the proto. It is a no-op when the outputs are newer than the
protos and were made by the same grpcio-tools version.

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


def _out_dir() -> Path:
    return OUT_ROOT / "cxcache" / "v1"


def _tools_version() -> str:
    from importlib.metadata import version

    return "grpcio-tools " + version("grpcio-tools")


def up_to_date() -> bool:
    out = _out_dir()
    stamp = out / STAMP
    if not stamp.exists() or not all((out / f).exists() for f in OUTPUTS):
        return False
    if not PROTO_ROOT.exists():  # building from an sdist: the stubs ship with it
        return True
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
    print("cxcache: stubs generated" if changed else "cxcache: stubs up to date")
