"""Every file path, link, module, flag, make target and gin file that the README and the
docs/ pages name exists, so a newcomer following them never meets a dead end."""

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = ([ROOT / "README.md"] + sorted((ROOT / "docs").glob("*.md"))
         + sorted((ROOT / "docs" / "notes").glob("*.md")))
GUIDES = [page for page in PAGES if page.parent.name != "notes"]
FIGURE = re.compile(r"<!-- figure: (\w+) -->")
EXTENSIONS = ("py", "gin", "md", "csv", "png", "json", "toml", "txt", "sh", "yaml", "yml")
TOP_LEVEL = ("impala_tf/", "experiments/", "tests/", "docs/", "deploy/", ".ci/")
RUN_OUTPUTS = {"operative_config.gin"}
ABSL_FLAGS = {"help", "helpfull", "helpshort", "verbosity", "logtostderr"}


def _ids(paths):
    return [str(p.relative_to(ROOT)) for p in paths]


def _code_spans(text):
    """Inline code and the lines of fenced code blocks."""
    blocks = re.findall(r"^```[^\n]*\n(.*?)^```", text, re.M | re.S)
    outside = re.sub(r"^```[^\n]*\n.*?^```", "", text, flags=re.M | re.S)
    return re.findall(r"`([^`\n]+)`", outside) + [
        line for block in blocks for line in block.splitlines()]


def _exists(name: str) -> bool:
    name = name.rstrip("/").split("#")[0]
    return ((ROOT / name).exists() or (ROOT / "experiments" / name).exists()
            or (ROOT / "impala_tf" / name).exists())


@pytest.mark.parametrize("page", PAGES, ids=_ids(PAGES))
def test_links_point_at_files_that_exist(page):
    text = page.read_text()
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if target.startswith(("http://", "https://", "#", "mailto:")):
            continue
        path = (page.parent / target.split("#")[0]).resolve()
        assert path.exists(), f"{page.name} links to {target}, which does not exist"


@pytest.mark.parametrize("page", PAGES, ids=_ids(PAGES))
def test_named_files_exist(page):
    pattern = re.compile(r"(?<![\w$/.-])((?:[\w.-]+/)*[\w.-]+\.(?:%s)|(?:%s)[\w./-]*)"
                         % ("|".join(EXTENSIONS), "|".join(map(re.escape, TOP_LEVEL))))
    for span in _code_spans(page.read_text()):
        for name in pattern.findall(span):
            if (re.search(r"[A-Z]{3,}|\*|\.\.\.", name) or name.startswith(("/", "."))
                    and not name.startswith(".ci/")):
                continue  # placeholders (LOGDIR/..., FILE.png), globs, absolute paths
            if ("/" not in name and not name.endswith((".gin", ".py"))
                    or name in RUN_OUTPUTS):
                continue  # a bare file name (metrics.jsonl) names a run's output
            assert _exists(name), f"{page.name} names {name}, which does not exist"


def _module_file(module: str):
    """The file `python -m module` runs: module.py, or a package's __main__.py."""
    path = ROOT / module.replace(".", "/")
    return path.with_suffix(".py") if path.with_suffix(".py").exists() else path / "__main__.py"


def _module_flags(module: str) -> set:
    source = _module_file(module).read_text()
    names = set(re.findall(r"DEFINE_\w+\(\s*\"(\w+)\"", source))
    if "define_verbose_flag()" in source:
        names.add("verbose")
    return names | ABSL_FLAGS


def _commands(page):
    """Each command line (continuations joined) that runs a module or a make target."""
    text = re.sub(r"\\\n\s*", " ", page.read_text())
    for span in _code_spans(text):
        for match in re.finditer(r"-m (impala_tf[\w.]*)([^`#|]*)", span):
            yield "module", match.group(1), match.group(2)
        for match in re.finditer(r"(?:^|\s)make ([\w-]+)", span):
            yield "make", match.group(1), ""


@pytest.mark.parametrize("page", PAGES, ids=_ids(PAGES))
def test_named_commands_modules_flags_and_make_targets_exist(page):
    makefile = (ROOT / "Makefile").read_text()
    for kind, name, rest in _commands(page):
        if kind == "make":
            assert re.search(rf"^{name}:", makefile, re.M), f"{page.name}: no make target {name}"
            continue
        assert _module_file(name).exists(), f"{page.name}: no module {name}"
        flags = _module_flags(name)
        for flag in re.findall(r"(?:^|\s)--(\w+)", rest):
            assert flag in flags, f"{page.name}: {name} has no flag --{flag}"
        for gin_file in re.findall(r"--gin_file[= ](\S+\.gin)", rest):
            if not re.search(r"[A-Z]{3,}", gin_file):  # MY_EXPERIMENT.gin: a placeholder
                assert _exists(gin_file), f"{page.name}: no gin file {gin_file}"


def test_quoted_figures_agree_with_the_one_figures_file():
    """A figure two pages quote (`TEXT<!-- figure: NAME -->`) is the one in docs/figures.json,
    which gives each its date and hardware; every figure there is quoted somewhere."""
    figures = {name: value for name, value in json.loads(
        (ROOT / "docs" / "figures.json").read_text()).items() if not name.startswith("_")}
    for name, figure in figures.items():
        assert figure["text"] and figure["date"] and figure["hardware"], name
    quoted = set()
    for page in GUIDES:
        text = page.read_text()
        for match in FIGURE.finditer(text):
            name = match.group(1)
            assert name in figures, f"{page.name} quotes an unknown figure {name}"
            before = text[max(0, match.start() - 60):match.start()]
            assert figures[name]["text"] in before, \
                f"{page.name}: figure {name} is {figures[name]['text']!r} in docs/figures.json"
            quoted.add(name)
    assert quoted == set(figures), f"never quoted: {sorted(set(figures) - quoted)}"


def test_guides_give_the_current_state_not_a_lab_notebook():
    """History (before/after, issue numbers, times of day) lives in docs/notes/."""
    for page in GUIDES:
        text = page.read_text()
        assert not re.search(r"\b[Ii]ssue \d+", text), page.name
        assert not re.search(r"^\*\*(Before|Now|Since then)\*\*", text, re.M), page.name


def test_the_readme_is_a_guide_not_a_notebook():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 200
    for page in ("experiments", "performance", "reliability", "scaling", "pong", "faq"):
        assert f"docs/{page}.md" in "\n".join(lines)
