#!/usr/bin/env bash
# Set up (scripts/install.sh --test) and run the whole test suite. Extra arguments go to pytest.
#   sudo scripts/test.sh                 # everything; BPF tests need root
#   sudo scripts/test.sh tests/unit -x   # a subset
# Under CI (CI=true) a skipped test is a failure, and so is a run that collects no test.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
"$here/scripts/install.sh" --test
cd "$here"
set +e
.venv/bin/python -m pytest -ra "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
    echo "test.sh: pytest collected no tests; that is a failure" >&2
    exit 1
fi
exit "$rc"
