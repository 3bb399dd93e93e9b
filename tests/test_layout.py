"""The package tree shows the two processes and the protocol between them: the actor side
(`acting/`) never imports the learner side (`learning/`) or the learner's server, the
protocol (`rpc/`) imports neither side, nothing below the wiring imports it, module-level
imports form no cycle, and the environment actor imports no TensorFlow by construction."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "impala_tf"
# The wiring and the commands: they may import anything.
TOP = {"impala_tf.launcher", "impala_tf.train", "impala_tf.evaluate", "impala_tf.config"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, top_level_only: bool):
    """The impala_tf modules `path` imports (`from impala_tf import x` counts as
    impala_tf.x when x is a module)."""
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("impala_tf")}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("impala_tf"):
            for alias in node.names:
                candidate = f"{node.module}.{alias.name}"
                as_path = PACKAGE.parent / candidate.replace(".", "/")
                found.add(candidate if (as_path.with_suffix(".py").exists()
                                        or (as_path / "__init__.py").exists())
                          else node.module)
    return found - {"impala_tf"}


MODULES = {_module_name(p): p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts}


def _violations(source_prefix, forbidden_prefixes, top_level_only=False):
    bad = []
    for name, path in MODULES.items():
        if not name.startswith(source_prefix):
            continue
        for target in _imports(path, top_level_only):
            if any(target == f or target.startswith(f + ".") for f in forbidden_prefixes):
                bad.append(f"{name} imports {target}")
    return bad


# The learner's end of the protocol: its server, the service it runs, and what they hold.
LEARNER_RPC = ["impala_tf.rpc.server", "impala_tf.rpc.service", "impala_tf.rpc.parameter_store",
               "impala_tf.rpc.unroll_queue"]


def test_the_actor_side_never_imports_the_learner_side_or_its_server():
    assert _violations("impala_tf.acting", ["impala_tf.learning", *LEARNER_RPC,
                                            "impala_tf.launcher", "impala_tf.train"]) == []


def test_the_protocol_imports_neither_side_and_the_client_not_the_server():
    assert _violations("impala_tf.rpc", ["impala_tf.acting", "impala_tf.learning",
                                         "impala_tf.launcher", "impala_tf.train"]) == []
    assert _violations("impala_tf.rpc.client", LEARNER_RPC) == []


def _imports_outside_main(path: Path):
    """The impala_tf modules `path` imports anywhere but in a function named `main` (a
    command's entry point, which may parse the config through the wiring's registry)."""
    tree = ast.parse(path.read_text())
    mains = [node for node in ast.walk(tree)
             if isinstance(node, ast.FunctionDef) and node.name == "main"]
    inside = {id(n) for main in mains for n in ast.walk(main)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in inside:
            continue
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("impala_tf")}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("impala_tf"):
            found |= {f"{node.module}.{a.name}" for a in node.names} | {node.module}
    return found


@pytest.mark.parametrize("lower", ["impala_tf.vtrace", "impala_tf.losses", "impala_tf.popart",
                                   "impala_tf.specs", "impala_tf.networks", "impala_tf.envs",
                                   "impala_tf.rpc", "impala_tf.acting", "impala_tf.learning"])
def test_nothing_below_the_wiring_imports_it(lower):
    """Below the wiring, modules get their parts passed in; only a command's `main` reaches
    up, to parse the config with every configurable registered."""
    bad = [f"{name} imports {target}" for name, path in MODULES.items()
           if name.startswith(lower) for target in _imports_outside_main(path)
           if target in TOP]
    assert bad == []


def test_module_level_imports_form_no_cycle():
    graph = {name: {t for t in _imports(path, top_level_only=True) if t in MODULES}
             for name, path in MODULES.items()}
    state, cycles = {}, []

    def visit(node, stack):
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert cycles == []


@pytest.mark.parametrize("module", ["impala_tf.acting.env_actor", "impala_tf.acting.process",
                                    "impala_tf.plot", "impala_tf.envs.factory",
                                    "impala_tf.rpc.client", "impala_tf.frames",
                                    "impala_tf.unroll", "impala_tf.rpc.validation",
                                    "impala_tf.evaluate", "impala_tf.scores"])
def test_the_lean_modules_import_no_tensorflow_in_a_fresh_interpreter(module):
    code = (f"import sys, {module}; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('tensorflow', 'keras', 'tf_keras')))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]"
