"""BUILD mirrors the sources: `bazel/check_targets.py` asks Bazel which files its targets
cover (`make bazel-test` runs it first) and names every module, script and test file that
has none, and every requirement out of step with requirements.txt. Here, its logic on this
tree's files and on the changes it must catch."""

import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bazel"))

import check_targets  # noqa: E402

EXPECTED = check_targets.expected_files(ROOT)
REQUIREMENTS = check_targets.pinned_requirements(ROOT)
ALL_COVERED = {"library or binary": set(EXPECTED["library or binary"]),
               "py_test": set(EXPECTED["py_test"])}


def test_the_tree_it_checks_holds_the_package_the_scripts_and_the_tests():
    modules = EXPECTED["library or binary"]
    assert {"impala_tf/learning/learner.py", "impala_tf/rpc/admission.py",
            "experiments/fuzz_wire.py"} <= modules
    assert all(not path.startswith("tests/") for path in modules)
    assert {"tests/test_build_file.py", "tests/test_idle_callers.py"} <= EXPECTED["py_test"]
    assert "tests/conftest.py" not in EXPECTED["py_test"]  # support files need no py_test
    assert {"tensorflow", "grpcio", "pytest-xdist"} <= REQUIREMENTS


def test_a_complete_build_has_no_problems():
    assert check_targets.problems(EXPECTED, ALL_COVERED, REQUIREMENTS, REQUIREMENTS) == []


def test_a_module_whose_target_was_removed_is_named():
    covered = dict(ALL_COVERED, **{"library or binary":
                                   ALL_COVERED["library or binary"] - {"impala_tf/vtrace.py"}})
    assert check_targets.problems(EXPECTED, covered, REQUIREMENTS, REQUIREMENTS) == [
        "impala_tf/vtrace.py has no library or binary target in BUILD"]


def test_a_new_test_file_without_a_py_test_is_named():
    expected = dict(EXPECTED, py_test=EXPECTED["py_test"] | {"tests/test_new.py"})
    assert check_targets.problems(expected, ALL_COVERED, REQUIREMENTS, REQUIREMENTS) == [
        "tests/test_new.py has no py_test target in BUILD"]


def test_requirements_and_their_targets_must_agree():
    found = check_targets.problems(EXPECTED, ALL_COVERED, REQUIREMENTS | {"jax"},
                                   REQUIREMENTS - {"numpy"} | {"scipy"})
    assert found == [
        "requirement 'jax' (requirements.txt) has no target in bazel/BUILD",
        "requirement 'numpy' (requirements.txt) has no target in bazel/BUILD",
        "bazel/BUILD has a target for 'scipy', which requirements.txt does not pin"]


def test_query_labels_become_paths_of_the_root_package():
    assert check_targets.files_of(["//:impala_tf/acting/actor.py", "//:tests/test_rpc.py",
                                   "//bazel:tensorflow", "//:experiments/catch.gin"]) == {
        "impala_tf/acting/actor.py", "tests/test_rpc.py"}


def test_imports_of_the_package_are_found_anywhere_in_a_file():
    source = (
        "import os\n"
        "import impala_tf  # noqa\n"
        "from impala_tf.rpc import codec, server\n"
        "from impala_tf.learning.learner import Learner\n"
        "def later():\n"
        "    from impala_tf.acting.actor import Actor\n"
        "from . import sibling\n")
    assert check_targets.imported_modules(source) == {
        "impala_tf", "impala_tf.rpc", "impala_tf.rpc.codec", "impala_tf.rpc.server",
        "impala_tf.learning.learner", "impala_tf.learning.learner.Learner", "impala_tf.acting.actor",
        "impala_tf.acting.actor.Actor"}
    assert check_targets.module_path("impala_tf.rpc", ROOT) == "impala_tf/rpc/__init__.py"
    assert check_targets.module_path("impala_tf.learning.learner.Learner", ROOT) is None


def test_an_import_without_its_dependency_is_named(tmp_path):
    (tmp_path / "impala_tf").mkdir()
    (tmp_path / "impala_tf" / "__init__.py").write_text("")
    (tmp_path / "impala_tf" / "low.py").write_text("X = 1\n")
    (tmp_path / "impala_tf" / "high.py").write_text(
        "def f():\n    from impala_tf.low import X\n    return X\n")
    targets = {"//:low": check_targets.Target({"impala_tf/low.py"}, set()),
               "//:high": check_targets.Target({"impala_tf/high.py"}, set())}
    assert check_targets.undeclared_imports(targets, tmp_path) == [
        "//:high imports impala_tf.low (impala_tf/high.py) without depending on //:low"]
    targets["//:high"] = check_targets.Target({"impala_tf/high.py"}, {"//:low"})
    assert check_targets.undeclared_imports(targets, tmp_path) == []


def test_query_xml_gives_each_rules_files_and_direct_dependencies():
    text = """<?xml version="1.1" encoding="UTF-8" standalone="no"?>
<query version="2">
    <rule class="py_library" location="BUILD:1:11" name="//:learner">
        <list name="deps"><label value="//:batcher"/><label value="//bazel:numpy"/></list>
        <list name="srcs"><label value="//:impala_tf/learning/learner.py"/></list>
        <rule-input name="//:batcher"/>
    </rule>
</query>"""
    assert check_targets.targets_from_xml(text) == {"//:learner": check_targets.Target(
        {"impala_tf/learning/learner.py"}, {"//:batcher", "//bazel:numpy"})}
