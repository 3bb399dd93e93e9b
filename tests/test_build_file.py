"""BUILD mirrors the sources: every module, script and test file has a target, and every
target's files exist. BUILD is Starlark; a Python exec with stub rules reads it."""

import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _read_build():
    targets = {}

    def rule(kind):
        def record(name, srcs=(), deps=(), data=(), main=None, **_):
            assert name not in targets, f"duplicate target {name}"
            targets[name] = dict(kind=kind, srcs=list(srcs), deps=list(deps), main=main)
        return record

    def glob(patterns):
        return sorted(str(p.relative_to(ROOT)) for pattern in patterns for p in ROOT.glob(pattern))

    namespace = dict(
        load=lambda *args: None,
        package=lambda **kwargs: None,
        requirement=lambda name: f"@pip//{name}",
        glob=glob,
        py_library=rule("py_library"),
        py_binary=rule("py_binary"),
        py_test=rule("py_test"),
    )
    exec(compile((ROOT / "BUILD").read_text(), "BUILD", "exec"), namespace)
    return targets


TARGETS = _read_build()


def _sources_of(kinds):
    return {src for t in TARGETS.values() if t["kind"] in kinds for src in t["srcs"]}


def _python_files(folder, pattern="*.py"):
    return sorted(str(p.relative_to(ROOT)) for p in (ROOT / folder).rglob(pattern)
                  if "__pycache__" not in p.parts)


@pytest.mark.parametrize("path", _python_files("impala_tf"))
def test_every_module_has_a_target(path):
    assert path in _sources_of({"py_library", "py_binary"}), f"{path} has no BUILD target"


@pytest.mark.parametrize("path", _python_files("experiments"))
def test_every_script_has_a_target(path):
    assert path in _sources_of({"py_library", "py_binary"}), f"{path} has no BUILD target"


@pytest.mark.parametrize("path", _python_files("tests", "test_*.py"))
def test_every_test_file_has_a_py_test(path):
    assert path in _sources_of({"py_test"}), f"{path} has no py_test"


def test_targets_name_existing_files_and_targets():
    for name, target in TARGETS.items():
        for src in target["srcs"] + ([target["main"]] if target["main"] else []):
            assert (ROOT / src).is_file(), f"{name}: {src} does not exist"
        for dep in target["deps"]:
            if dep.startswith(":"):
                assert dep[1:] in TARGETS, f"{name}: unknown dep {dep}"
            else:
                assert dep.startswith("@pip//"), f"{name}: unexpected dep {dep}"

