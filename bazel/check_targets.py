"""Checks that BUILD mirrors the sources, asking Bazel itself (`bazel query`): every module
of the package and every experiment script is in a `py_library` or `py_binary`, every test
file has a `py_test`, every target that imports a module of the package depends directly on
the target holding it, and //bazel has a target for each pinned requirement and no other.
Exits 1 naming what is missing (a new file without a target, a target removed, an import
without its dependency).

    python bazel/check_targets.py [BAZEL_FLAGS...]   (run by `make bazel-test`)
"""

import ast
import pathlib
import subprocess
import sys
import xml.etree.ElementTree as ElementTree
from typing import Dict, Iterable, List, NamedTuple, Sequence, Set

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
    return {line.split("==")[0].split("[")[0].strip() for line in lines  # ray[tune]: ray
            if line.strip() and not line.lstrip().startswith("#")}


def files_of(labels: Iterable[str]) -> Set[str]:
    """`//:impala_tf/acting/actor.py` -> `impala_tf/acting/actor.py` (files of the root package)."""
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


class Target(NamedTuple):
    """A Python target's source files (paths) and direct dependencies (labels)."""

    srcs: Set[str]
    deps: Set[str]


def targets_from_xml(text: str) -> Dict[str, Target]:
    """label -> `Target`, from `bazel query --output=xml` over Python rules."""
    targets = {}
    for rule in ElementTree.fromstring(text).iter("rule"):
        lists = {node.get("name"): [label.get("value") for label in node.iter("label")]
                 for node in rule.findall("list")}
        targets[rule.get("name")] = Target(files_of(lists.get("srcs", [])),
                                           set(lists.get("deps", [])))
    return targets


def imported_modules(source: str, package: str = "impala_tf") -> Set[str]:
    """The modules of `package` that `source` imports (anywhere, lazy imports too), as
    dotted names; `from a.b import c` gives both `a.b.c` and `a.b` (c may be either)."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name for name in found if name == package or name.startswith(package + ".")}


def module_path(name: str, root: pathlib.Path = ROOT):
    """The file of a dotted module name under `root`, or None when it is not a module."""
    base = root / name.replace(".", "/")
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.exists():
            return str(path.relative_to(root))
    return None


def undeclared_imports(targets: Dict[str, Target], root: pathlib.Path = ROOT) -> List[str]:
    """One line per (target, imported target) where a source of the first imports a module
    of the second without the first depending on it directly."""
    owner = {path: label for label, target in targets.items() for path in target.srcs
             if path.startswith("impala_tf/")}
    found = []
    for label, target in sorted(targets.items()):
        needed = set()
        for path in sorted(target.srcs):
            for name in imported_modules((root / path).read_text()):
                module = module_path(name, root)
                if module in owner and owner[module] != label:
                    needed.add((owner[module], path, name))
        missing = {}
        for dep, path, name in sorted(needed):
            if dep not in target.deps:
                missing.setdefault(dep, (path, name))
        found += [f"{label} imports {name} ({path}) without depending on {dep}"
                  for dep, (path, name) in sorted(missing.items())]
    return found


def _query(bazel_flags: Sequence[str], expression: str, output: str = "label"):
    text = subprocess.run(["bazel", "--batch", "query", *bazel_flags, expression,
                           f"--output={output}"], cwd=ROOT, check=True, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL).stdout
    return set(text.split()) if output == "label" else text


def main(bazel_flags: Sequence[str]) -> int:
    covered = {
        "library or binary": files_of(_query(
            bazel_flags, 'labels(srcs, kind("py_library|py_binary", //...))')),
        "py_test": files_of(_query(bazel_flags, 'labels(srcs, kind("py_test", //...))')),
    }
    requirement_targets = {label.split(":", 1)[1]
                           for label in _query(bazel_flags,
                                               "attr(tags, requirement, //bazel:*)")}
    found = problems(expected_files(), covered, pinned_requirements(), requirement_targets)
    found += undeclared_imports(targets_from_xml(_query(
        bazel_flags, 'kind("py_library|py_binary|py_test", //...)', output="xml")))
    for line in found:
        print(f"check_targets: {line}")
    if not found:
        tests = len(covered["py_test"] & expected_files()["py_test"])
        print(f"check_targets: every module and script has a target, every one of the "
              f"{tests} test files a py_test, every import of the package its dependency, "
              "every requirement its target")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
