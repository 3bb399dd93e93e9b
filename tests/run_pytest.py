"""Bazel `py_test` entry point: runs pytest on the test files passed as arguments."""

import sys

import pytest

if __name__ == "__main__":
    sys.exit(pytest.main(["-q", "-p", "no:randomly", *sys.argv[1:]]))  # file order, as make test
