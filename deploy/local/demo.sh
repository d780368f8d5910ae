#!/usr/bin/env bash
# The main job end to end: start the local stack, train the specialist on Banking77's train split, submit its
# 3,080 test items, wait with a progress bar, then print accuracy, escalation share and time per tier.
#
#   deploy/local/demo.sh [DATASET_DIR] [extra `cascade demo` options, e.g. --threshold 0.3]
#
# DATASET_DIR holds train.csv and test.csv (text, label); ../shared/datasets/banking77 by default.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"

bash "$root/deploy/local/up.sh"
cd "$root"
exec "$root/.venv/bin/cascade" demo "$@"
