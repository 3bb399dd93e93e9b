#!/usr/bin/env bash
# `make bazel-test`: the fast tests under Bazel (Debian's bazel-bootstrap, Bazel 4.2.3), with
# the project's virtualenv as the interpreter (the Makefile puts .venv/bin first on PATH).
#
#   bazel/test.sh [OFFLINE_DIR] [BAZEL_TEST_FLAGS...]
#
# Installs bazel-bootstrap when bazel is missing (as root; else says how). When OFFLINE_DIR
# exists (default ../shared/third_party/bazel: the repositories Bazel 4.2.3 pins, for a
# machine without network), points rules_cc, rules_java and remote_coverage_tools at it;
# with network Bazel fetches them itself. Then checks that BUILD covers every file
# (bazel/check_targets.py) and runs `bazel test //...` less the tests tagged "slow"
# (multi-process runs, training to a return, network namespaces: `make test` runs those).
set -euo pipefail
cd "$(dirname "$0")/.."
offline="${1:-../shared/third_party/bazel}"
shift || true
if ! command -v bazel >/dev/null; then
  if [ "$(id -u)" = 0 ]; then
    echo "make bazel-test: installing Debian's bazel-bootstrap" >&2
    apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q bazel-bootstrap >/dev/null
  else
    echo "make bazel-test: bazel is missing: sudo apt-get install bazel-bootstrap" >&2
    exit 1
  fi
fi
flags=()
if [ -d "$offline" ]; then
  deps="$PWD/.bazel-deps"
  mkdir -p "$deps"
  for archive in "$offline"/rules_cc-*.tar.gz "$offline"/rules_java-*.tar.gz; do
    tar -xzf "$archive" -C "$deps"
  done
  rm -rf "$deps/remote_coverage_tools"  # a writable copy: the shared folder may be read-only
  cp -r "$offline/remote_coverage_tools" "$deps/remote_coverage_tools"
  chmod -R u+w "$deps"
  flags+=(--override_repository=rules_cc="$deps/rules_cc"
          --override_repository=rules_java="$deps/rules_java"
          --override_repository=remote_coverage_tools="$deps/remote_coverage_tools")
fi
python bazel/check_targets.py "${flags[@]}"
exec bazel --batch test "${flags[@]}" --test_tag_filters=-slow --local_test_jobs=2 \
  --test_output=errors "$@" //...
