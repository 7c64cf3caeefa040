#!/usr/bin/env bash
# scripts/install-deps on a machine where it cannot install: exit 2 with the
# missing packages named; --no-install and WFP_NO_INSTALL=1 skip apt (exit 0);
# --list names every set; an unknown argument is exit 2. Runs with a PATH of
# its own (no apt-get, no dpkg-query, no sudo), so nothing is installed.
set -euo pipefail
script=$1/scripts/install-deps
bin=$(mktemp -d /tmp/wfp-install-deps.XXXXXX)
trap 'rm -rf "$bin"' EXIT
for tool in bash env grep sed id cat; do ln -s "$(command -v "$tool")" "$bin/$tool"; done
run() { env -i PATH="$bin" HOME=/nonexistent bash "$script" "$@"; }
fail() { echo "FAIL: $*" >&2; exit 1; }

set +e
out=$(run --test 2>&1); rc=$?
set -e
[[ $rc == 2 ]] || fail "no apt: exit $rc, want 2: $out"
[[ $out == *"missing Debian packages:"*"libgtest-dev"*"redis-tools"* ]] || fail "no apt: packages not named: $out"
[[ $out == *"apt-get is not available"* ]] || fail "no apt: reason not given: $out"

out=$(run --no-install 2>&1) || fail "--no-install: exit $?: $out"
[[ $out == *"--no-install: not installing"*"cmake"* ]] || fail "--no-install: $out"
out=$(env -i PATH="$bin" WFP_NO_INSTALL=1 bash "$script" --bench 2>&1) || fail "WFP_NO_INSTALL=1: exit $?: $out"
[[ $out == *"nginx-light"* && $out != *"libgtest-dev"* ]] || fail "WFP_NO_INSTALL=1 --bench: $out"

out=$(run --list) || fail "--list: exit $?"
for set in run build test bench; do [[ $out == *"$set:"* ]] || fail "--list lacks $set: $out"; done
[[ $out != *"prometheus "* && $out != *"redis-server"* ]] || fail "--list installs a service: $out"

set +e
out=$(run --frobnicate 2>&1); rc=$?
set -e
[[ $rc == 2 && $out == *"unknown argument"* ]] || fail "unknown argument: exit $rc: $out"
echo "install-deps: all checks passed"
