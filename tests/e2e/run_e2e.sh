#!/usr/bin/env bash
# Run the Bazel e2e workspace by hand (installs Bazel 4.2.3 when missing).
#   tests/e2e/run_e2e.sh                                  # local, offline
#   tests/e2e/run_e2e.sh grpc://127.0.0.1:8981 [--instance-name X] [--exec-property K=V]...
# With an executor address: every action must run remotely, then after `bazel clean`
# every action must be a remote cache hit. See tests/e2e/bazel.py for the flags.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
PY="$here/../../.venv/bin/python"
[ -x "$PY" ] || PY=python3
if [ $# -eq 0 ]; then
  exec "$PY" "$here/bazel.py" local
fi
exec "$PY" "$here/bazel.py" remote "$@"
