"""Build hook: generate the gRPC stubs and the version module before packaging.

The stubs (src/cxcache/v1/*_pb2*.py) and src/cxcache/_version.py are generated
here, when setup.py is loaded, i.e. before setuptools collects the package's files
for any command (build_py, sdist, editable installs): generating them later, in
build_py.run, left them out of the wheel. The packages are listed explicitly so that
cxcache.v1 is part of the distribution even though it is not in git.

The version is the repository's one version source, /VERSION (two levels up). The
sdist carries a copy of it at its root, which is what a build from the sdist reads.
"""

import shutil
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.command.sdist import sdist

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import build_protos  # noqa: E402

VERSION = build_protos.project_version()


def _generate() -> None:
    build_protos.generate()
    build_protos.write_version_module(VERSION)


class BuildPyWithProtos(build_py):
    def run(self):
        _generate()
        super().run()


class SdistWithVersion(sdist):
    def run(self):
        _generate()
        super().run()

    def make_release_tree(self, base_dir, files):
        super().make_release_tree(base_dir, files)
        # The sdist must build on its own: ship the repository's VERSION with it.
        target = Path(base_dir) / "VERSION"
        if target.exists() or target.is_symlink():
            target.unlink()
        shutil.copyfile(build_protos.version_file(), target)


_generate()

setup(
    version=VERSION,
    packages=["cxcache", "cxcache.v1"],
    package_dir={"": "src"},
    cmdclass={"build_py": BuildPyWithProtos, "sdist": SdistWithVersion},
)
