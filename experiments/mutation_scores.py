"""The mutation score per module of the last `make mutate` (mutmut's results in mutants/).

    python experiments/mutation_scores.py [--survivors] [--markdown]

Score = killed / (killed + survived + no tests), per module; timeouts count as killed (a
mutant that makes the tests hang was caught by their deadline). `--survivors` lists the
surviving mutants' names (`mutmut show NAME` prints each one's diff).
"""

import argparse
import collections
import json
import pathlib
import sys

# mutmut's exit codes (mutmut/stats.py): 1 and 3 killed, 0 survived, 5 and 33 no tests.
KILLED = {1, 3, 24, -24, 152, 255, 36}
SURVIVED = {0}
NO_TESTS = {5, 33}


def results(root: pathlib.Path):
    """module -> Counter of killed / survived / no tests / not checked / other, and the
    names of the survivors and of the mutants no test ran."""
    counts, survivors = {}, collections.defaultdict(list)
    for meta in sorted(root.rglob("*.py.meta")):
        module = str(meta.relative_to(root))[:-len(".meta")]
        counter = counts.setdefault(module, collections.Counter())
        for name, code in json.loads(meta.read_text())["exit_code_by_key"].items():
            kind = ("killed" if code in KILLED else "survived" if code in SURVIVED else
                    "no tests" if code in NO_TESTS else "not checked" if code is None else
                    "other")
            counter[kind] += 1
            if kind in ("survived", "no tests"):
                survivors[module].append((kind, name))
    return counts, survivors


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="mutants", help="mutmut's folder")
    parser.add_argument("--survivors", action="store_true", help="list surviving mutants")
    parser.add_argument("--markdown", action="store_true", help="a Markdown table")
    args = parser.parse_args()
    root = pathlib.Path(args.root)
    if not root.is_dir():
        print(f"no {root}/: run `make mutate` first", file=sys.stderr)
        return 1
    counts, survivors = results(root)
    rows = []
    for module, c in counts.items():
        judged = c["killed"] + c["survived"] + c["no tests"]
        score = f"{c['killed'] / judged:.1%}" if judged else "-"
        rows.append((module, c["killed"] + c["survived"] + c["no tests"] + c["not checked"]
                     + c["other"], c["killed"], c["survived"], c["no tests"],
                     c["not checked"] + c["other"], score))
    header = ("module", "mutants", "killed", "survived", "no tests", "unfinished", "score")
    if args.markdown:
        print("| " + " | ".join(header) + " |")
        print("|" + "---|" * len(header))
        for row in rows:
            print("| " + " | ".join(f"`{row[0]}`" if i == 0 else str(v)
                                    for i, v in enumerate(row)) + " |")
    else:
        print(f"{header[0]:40s}" + "".join(f"{h:>11s}" for h in header[1:]))
        for row in rows:
            print(f"{row[0]:40s}" + "".join(f"{v!s:>11s}" for v in row[1:]))
    if args.survivors:
        for module, names in survivors.items():
            for kind, name in names:
                print(f"{kind:9s} {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
