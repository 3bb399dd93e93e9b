"""Under `make mutate`, a mutant's tests run fastest first, so a killed mutant dies early.

mutmut 3 runs each mutant's tests with `-x` (stop at the first failure) but hands them to
pytest in no particular order. Its statistics run records every test's duration in
`mutmut-stats.json` (in the working directory of the mutant runs); this sorts by that.
Outside a mutation run (no MUTANT_UNDER_TEST in the environment) the order is left alone.
"""

import json
import os
from pathlib import Path

STATS = Path("mutmut-stats.json")


def fastest_first(items):
    """Sorts pytest items in place by their recorded duration (unknown ones last)."""
    if "MUTANT_UNDER_TEST" not in os.environ or not STATS.exists():
        return
    durations = json.loads(STATS.read_text()).get("duration_by_test", {})
    items.sort(key=lambda item: durations.get(item.nodeid, float("inf")))
