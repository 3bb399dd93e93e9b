"""`requirement(name)`: the target standing for a pinned PyPI requirement.

The packages themselves come from the Python interpreter Bazel runs (`make bazel-test` puts
the project's `.venv`, built from requirements.txt, first on PATH; Bazel 4's autodetecting
Python toolchain takes `python3` from there), so a requirement's target holds no files: it
names the dependency in the graph. //bazel:BUILD has one per line of requirements.txt.
"""

def requirement(name):
    return "//bazel:" + name
