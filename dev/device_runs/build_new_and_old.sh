# Sourced by the A/B device scripts: this tree built for sm_90 (build_sm90.sh) and, with OLD_DIFF set (a `git diff`
# of the change), the tree before it beside it (build_patched_copy.sh old "$OLD_DIFF" -R); returns when both are
# built. Logs to $OUT.
set -o pipefail
OUT=${OUT:?set OUT to a folder for the logs}
if [ -n "$OLD_DIFF" ]; then
  source dev/device_runs/build_patched_copy.sh old "$OLD_DIFF" -R
fi
source dev/device_runs/build_sm90.sh
wait
