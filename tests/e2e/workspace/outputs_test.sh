#!/usr/bin/env bash
# Checks the contents of the generated files (runfiles are under $TEST_SRCDIR/redbarn_e2e).
set -euo pipefail
dir="${TEST_SRCDIR}/${TEST_WORKSPACE}"

expect() {  # expect FILE EXPECTED-CONTENT
  local got
  got="$(cat "$dir/$1")"
  if [ "$got" != "$2" ]; then
    printf 'FAIL %s\n--- got:\n%s\n--- want:\n%s\n' "$1" "$got" "$2" >&2
    exit 1
  fi
  echo "ok $1"
}

expect joined.txt "$(printf 'part a\npart b\npart c\nPART A\n7')"
expect bin_output.txt "hello from redbarn, 5 lines"
expect tree_listing.txt "$(printf './f1.txt\n./f2.txt\n./f3.txt\n./f4.txt\n./sub/nested.txt\nfile 4 of 4\nnested')"
