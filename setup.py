"""Packaging glue that pyproject.toml cannot express: ship the top-level ``configs/`` folder inside
the package (``segbench/configs/`` in the wheel), so an installed segbench finds its configs.

The configs stay at the repository's top level, where users read and edit them; an editable
install and a source checkout read them there (:func:`segbench.config.find_config_dir`).
"""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent


class BuildWithConfigs(build_py):
    """``build_py`` plus ``configs/**/*.yaml`` -> ``<build>/segbench/configs/``."""

    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return  # an editable install reads the checkout's configs/ directly
        source = ROOT / "configs"
        target = Path(self.build_lib) / "segbench" / "configs"
        for path in sorted(source.rglob("*.yaml")):
            out = target / path.relative_to(source)
            out.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, out)


setup(cmdclass={"build_py": BuildWithConfigs})
