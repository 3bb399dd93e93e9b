"""Build hook: the gin experiments ship inside the package.

Experiments are written in the top-level `experiments/` folder; the wheel (and any
non-editable install) gets a copy of every `.gin` file under `impala_tf/experiments/`, where
`impala_tf.config` finds them with importlib.resources when there is no checkout around.
Everything else about the package is in pyproject.toml.
"""

import pathlib
import shutil

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = pathlib.Path(__file__).resolve().parent


class BuildPyWithExperiments(build_py):
    """build_py, plus experiments/**/*.gin copied to impala_tf/experiments/."""

    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return  # an editable install reads the checkout's experiments/ directly
        target = pathlib.Path(self.build_lib) / "impala_tf" / "experiments"
        for source in sorted((ROOT / "experiments").rglob("*.gin")):
            destination = target / source.relative_to(ROOT / "experiments")
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, destination)


setup(cmdclass={"build_py": BuildPyWithExperiments})
