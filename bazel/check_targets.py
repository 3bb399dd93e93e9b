"""Checks that BUILD mirrors the sources, asking Bazel itself (`bazel query`): every module
of the package and every experiment script is in a `py_library` or `py_binary`, every test
file has a `py_test`, and //bazel has a target for each pinned requirement and no other.
Exits 1 naming what is missing (a new file without a target, a target removed).

    python bazel/check_targets.py [BAZEL_FLAGS...]   (run by `make bazel-test`)
"""

import pathlib
import subprocess
import sys
from typing import Dict, Iterable, List, Sequence, Set

ROOT = pathlib.Path(__file__).resolve().parent.parent


def expected_files(root: pathlib.Path = ROOT) -> Dict[str, Set[str]]:
    """The files each kind of target must cover, as paths relative to `root`."""
    def python(folder: str, pattern: str = "*.py") -> Set[str]:
        return {str(p.relative_to(root)) for p in (root / folder).rglob(pattern)
                if "__pycache__" not in p.parts}

    return {"library or binary": python("impala_tf") | python("experiments"),
            "py_test": python("tests", "test_*.py")}


def pinned_requirements(root: pathlib.Path = ROOT) -> Set[str]:
    lines = (root / "requirements.txt").read_text().splitlines()
    return {line.split("==")[0].strip() for line in lines
            if line.strip() and not line.lstrip().startswith("#")}


def files_of(labels: Iterable[str]) -> Set[str]:
    """`//:impala_tf/actor.py` -> `impala_tf/actor.py` (files of the root package)."""
    return {label.split(":", 1)[1] for label in labels
            if label.startswith("//:") and label.endswith(".py")}


def problems(expected: Dict[str, Set[str]], covered: Dict[str, Set[str]],
             requirements: Set[str], requirement_targets: Set[str]) -> List[str]:
    """One line per file without its kind of target and per requirement out of step."""
    found = []
    for kind, files in expected.items():
        found += [f"{path} has no {kind} target in BUILD"
                  for path in sorted(files - covered.get(kind, set()))]
    found += [f"requirement {name!r} (requirements.txt) has no target in bazel/BUILD"
              for name in sorted(requirements - requirement_targets)]
    found += [f"bazel/BUILD has a target for {name!r}, which requirements.txt does not pin"
              for name in sorted(requirement_targets - requirements)]
    return found


def _query(bazel_flags: Sequence[str], expression: str) -> Set[str]:
    output = subprocess.run(["bazel", "--batch", "query", *bazel_flags, expression,
                             "--output=label"], cwd=ROOT, check=True, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL).stdout
    return set(output.split())


def main(bazel_flags: Sequence[str]) -> int:
    covered = {
        "library or binary": files_of(_query(
            bazel_flags, 'labels(srcs, kind("py_library|py_binary", //...))')),
        "py_test": files_of(_query(bazel_flags, 'labels(srcs, kind("py_test", //...))')),
    }
    requirement_targets = {label.split(":", 1)[1]
                           for label in _query(bazel_flags, "kind(py_library, //bazel:*)")}
    found = problems(expected_files(), covered, pinned_requirements(), requirement_targets)
    for line in found:
        print(f"check_targets: {line}")
    if not found:
        tests = len(covered["py_test"] & expected_files()["py_test"])
        print(f"check_targets: every module and script has a target, every one of the "
              f"{tests} test files a py_test, every requirement its target")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
