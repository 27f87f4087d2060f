"""Build hook: generate the gRPC stubs from ../../proto before packaging."""

import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

sys.path.insert(0, str(Path(__file__).resolve().parent))
import build_protos  # noqa: E402


class BuildPyWithProtos(build_py):
    def run(self):
        build_protos.generate()
        super().run()


setup(cmdclass={"build_py": BuildPyWithProtos})
