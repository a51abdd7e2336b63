#!/usr/bin/env bash
# One setup step: says what it does, runs it, and says how long it took (and the exit status when it failed).
# Usage: bash scripts/step.sh "what it does" command [args...]
set -uo pipefail
what=$1
shift
echo "==> $what"
start=$(date +%s)
"$@"
rc=$?
took=$(($(date +%s) - start))
if [ "$rc" = 0 ]; then echo "<== $what: ${took} s"; else echo "<== $what: failed after ${took} s (exit $rc)" >&2; fi
exit "$rc"
