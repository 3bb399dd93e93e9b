"""A non-editable install works outside the checkout: the wheel holds the data files and
the gin experiments, its console scripts exist, and Catch trains from it.

The wheel is built from this checkout without network (no build isolation) and installed
into a fresh virtualenv that reuses the dependencies already installed beside this Python
(a .pth line), so nothing is downloaded.
"""

import ast
import importlib.metadata
import json
import os
import re
import site
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "--no-index", "-q", "-w", str(out), str(ROOT)], check=True,
                   capture_output=True, timeout=300)
    (path,) = out.glob("impala_tf-*.whl")
    return path


def test_the_wheel_holds_the_data_files_and_the_experiments(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    experiments = sorted(str(p.relative_to(ROOT / "experiments"))
                         for p in (ROOT / "experiments").rglob("*.gin"))
    assert experiments and all(f"impala_tf/experiments/{e}" in names for e in experiments)
    data = sorted(p.name for p in (ROOT / "impala_tf" / "data").glob("*.csv"))
    assert data and all(f"impala_tf/data/{d}" in names for d in data)
    entry_points = zipfile.ZipFile(wheel).read(
        next(n for n in names if n.endswith("entry_points.txt"))).decode()
    for script in ("impala-train", "impala-evaluate", "impala-plot", "impala-benchmark"):
        assert f"{script} = " in entry_points


def _third_party_imports(folder: Path) -> dict:
    """Top-level module -> files, for every absolute import in `folder`'s Python files that
    is neither the standard library nor impala_tf (read from the source with `ast`)."""
    found: dict = {}
    for path in sorted(folder.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top != "impala_tf":
                    found.setdefault(top, set()).add(str(path.relative_to(folder)))
    return found


def _normalised(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _declared() -> set:
    """pyproject's dependencies and its `pbt` extra (Ray, imported by impala_tf.pbt only)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return {_normalised(re.split(r"[<>=!~ ;\[]", d, maxsplit=1)[0])
            for d in project["dependencies"] + project["optional-dependencies"]["pbt"]}


# Declared dependencies the library does not import itself, each with where it is used.
_NOT_IMPORTED = {
    "tensorboard": "the writer behind tf.summary (learning/metrics.py)",
    "tensorflow-probability": "the tests' independent reference for the losses",
    "tf-keras": "tensorflow-probability's Keras on TensorFlow 2.16+",
}


def test_the_declared_dependencies_cover_the_imports():
    """Every third-party module the library imports (read from its source) comes from a
    distribution in pyproject's dependencies, and every dependency is imported or named
    above with its use."""
    distributions = importlib.metadata.packages_distributions()
    declared = _declared()
    imported = set()
    for module, files in _third_party_imports(ROOT / "impala_tf").items():
        owners = {_normalised(d) for d in distributions.get(module, [])}
        assert owners, f"{module} (imported by {sorted(files)}) is not installed"
        assert owners & declared, (
            f"{module} (imported by {sorted(files)}) comes from {sorted(owners)}, which "
            "pyproject.toml's dependencies do not list")
        imported |= owners & declared
    assert declared - imported == set(_NOT_IMPORTED), declared - imported
    assert "tf.summary" in (ROOT / "impala_tf" / "learning" / "metrics.py").read_text()
    assert "tensorflow_probability" in _third_party_imports(ROOT / "tests")
    assert "tf-keras" in "".join(importlib.metadata.requires("tensorflow-probability"))


def test_the_import_check_sees_an_undeclared_import(tmp_path):
    """The check above reads imports from the files: an import of a module from an
    undeclared distribution (pytest's) is found."""
    (tmp_path / "module.py").write_text("import os\nfrom _pytest import python\n"
                                        "from . import sibling\n")
    assert set(_third_party_imports(tmp_path)) == {"_pytest"}
    owners = importlib.metadata.packages_distributions()["_pytest"]
    assert not {_normalised(d) for d in owners} & _declared()


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory):
    """(venv folder, environment) of a fresh virtualenv with the wheel installed."""
    venv = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    fresh_site = subprocess.run(
        [str(python), "-c", "import site; print(site.getsitepackages()[0])"],
        check=True, capture_output=True, text=True).stdout.strip()
    # The dependencies installed beside this Python, without its editable impala_tf (a .pth
    # line adds a folder without running the .pth files in it).
    (Path(fresh_site) / "reuse_dependencies.pth").write_text(site.getsitepackages()[0] + "\n")
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index",
                    str(wheel)], check=True, capture_output=True, timeout=300)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "IMPALA_TF_VERBOSE")}
    env["CUDA_VISIBLE_DEVICES"] = ""
    return venv, env, fresh_site


# Each installed command -> flags its help must list (its own, not absl's).
SCRIPT_FLAGS = {
    "impala-train": ["gin_file", "logdir", "role", "max_frames", "verbose"],
    "impala-evaluate": ["logdir", "checkpoint", "num_episodes", "verbose"],
    "impala-plot": ["out", "labels", "title", "verbose"],
    "impala-benchmark": ["gin_file", "seconds", "stages", "verbose"],
    "impala-pbt": ["gin_file", "logdir", "address", "verbose"],
}


def test_every_installed_command_answers_help(installed, tmp_path):
    venv, env, _ = installed
    for script, names in SCRIPT_FLAGS.items():
        result = subprocess.run([str(venv / "bin" / script), "--help"], cwd=tmp_path, env=env,
                                capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, (script, result.stderr[-2000:])
        assert result.stdout.startswith(f"usage: {script} [flags]\n\n"), result.stdout[:300]
        for name in names:
            assert f"--{name}\n" in result.stdout or f"--[no]{name}\n" in result.stdout, \
                (script, name)
        assert "(internal)" not in result.stdout


def test_an_installed_wheel_trains_catch_outside_the_checkout(installed, tmp_path):
    venv, env, fresh_site = installed
    python = venv / "bin" / "python"
    work = tmp_path / "elsewhere"
    work.mkdir()
    where = subprocess.run([str(python), "-c", "import impala_tf.config as c; "
                            "print(c.__file__); print(c.EXPERIMENTS_DIR)"],
                           cwd=work, env=env, check=True, capture_output=True, text=True)
    module_file, experiments = where.stdout.split()[-2:]
    assert module_file.startswith(fresh_site) and experiments.startswith(fresh_site)
    result = subprocess.run(
        [str(venv / "bin" / "impala-train"), "--gin_file=catch.gin", "--logdir=run",
         "--max_frames=40000", "--gin_bindings=Learner.log_every_seconds = 2"],
        cwd=work, env=env, capture_output=True, text=True, timeout=400)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    records = [json.loads(line) for line in (work / "run" / "metrics.jsonl").open()]
    assert records[-1]["env_frames"] >= 40000 and records[-1]["learner_steps"] > 0
    assert any(r["episodes"] for r in records)
    assert (work / "run" / "checkpoints").is_dir()
    # The other installed commands, run for real on that run: evaluation, the curves and
    # one benchmark stage.
    evaluated = subprocess.run([str(venv / "bin" / "impala-evaluate"), "--logdir=run",
                                "--num_episodes=4"], cwd=work, env=env, capture_output=True,
                               text=True, timeout=300)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    evaluation = json.loads((work / "run" / "evaluation.json").read_text())
    assert evaluation["num_episodes"] == 4 and evaluation["rows"][0]["episodes"] == 4
    plotted = subprocess.run([str(venv / "bin" / "impala-plot"), "run"], cwd=work, env=env,
                             capture_output=True, text=True, timeout=300)
    assert plotted.returncode == 0, plotted.stderr[-3000:]
    assert (work / "run" / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    benchmarked = subprocess.run(
        [str(venv / "bin" / "impala-benchmark"), "--gin_file=catch.gin", "--stages=vtrace",
         "--seconds=1", "--json=bench.json"], cwd=work, env=env, capture_output=True,
        text=True, timeout=300)
    assert benchmarked.returncode == 0, benchmarked.stderr[-3000:]
    assert json.loads((work / "bench.json").read_text())["stages"]["vtrace"]
    # The score tables ship too: the DMLab action set loads from the installed package.
    subprocess.run([str(python), "-c", "from impala_tf.envs import dmlab; "
                    "assert len(dmlab.ACTION_SET) == 9"], cwd=work, env=env, check=True,
                   timeout=120)


def _pins(path: Path) -> dict:
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, version = line.split("==")
            pins[_normalised(name)] = version
    return pins


def test_the_tpu_requirements_pin_tensorflow_2_20_and_the_rest_as_requirements_txt():
    """requirements-tpu.txt (a TPU VM's install, and `make test-tf220`'s with the CPU wheel):
    the TPU build of TensorFlow 2.20 with its libtpu and the 2.20 family, every other pin
    as requirements.txt's, so that the two cannot drift apart."""
    main, tpu = _pins(ROOT / "requirements.txt"), _pins(ROOT / "requirements-tpu.txt")
    assert tpu["tensorflow-tpu"] == "2.20.0" and "libtpu" in tpu
    assert tpu["tf-keras"].startswith("2.20.") and tpu["tensorboard"].startswith("2.20.")
    tensorflow_family = {"tensorflow", "tf-keras", "tensorboard"}
    assert {k: v for k, v in tpu.items() if k in main and k not in tensorflow_family} == \
        {k: v for k, v in main.items() if k not in tensorflow_family}
    # What only a TPU needs: the wheel, libtpu and the Cloud TPU API's client.
    assert set(tpu) - set(main) == {"tensorflow-tpu", "libtpu", "google-api-python-client",
                                    "oauth2client"}
    assert "tensorflow" not in tpu  # the TPU wheel provides the module itself
