"""A long fuzz run of what arrives over the network: the property-based tests of
`tests/test_wire_fuzz.py` (decoder, validator, live gRPC service) with many more examples.

    python experiments/fuzz_wire.py --examples 100000 [--seed 7]

Prints hypothesis' statistics per test (examples run, time, outcomes); exits non-zero with
the smallest failing message if any property breaks. The suite runs the same tests with a
few hundred examples each.
"""

import argparse
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
TESTS = os.path.join(HERE, "..", "tests", "test_wire_fuzz.py")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=20000,
                        help="examples per decoder test (service tests run a tenth as many)")
    parser.add_argument("--seed", type=int, default=None, help="hypothesis seed")
    args = parser.parse_args()
    env = dict(os.environ, HYPOTHESIS_PROFILE="fuzz", HYPOTHESIS_EXAMPLES=str(args.examples),
               CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="2")
    command = [sys.executable, "-m", "pytest", TESTS, "-q", "-p", "no:cacheprovider",
               "--hypothesis-show-statistics", "--timeout=0"]
    if args.seed is not None:
        command.append(f"--hypothesis-seed={args.seed}")
    return subprocess.call(command, env=env)


if __name__ == "__main__":
    sys.exit(main())
