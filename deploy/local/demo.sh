#!/usr/bin/env bash
# The main job end to end, and what the cascade is for, in two parts:
#  1. The local stack with the real vLLM server (SmolLM2-135M on CPU): train the specialist on Banking77's train
#     split, calibrate a policy against the served LLM on half of the test split, run the other half under it.
#     SmolLM2 is worse than the specialist in every band, so the certified policy escalates nothing, and says why.
#  2. The same trade against GPT-4's RECORDED answers on Banking77, replayed by bench/replay_llm.py through a real
#     worker: specialist alone, all-LLM and the certified cascade side by side, with a cost-accuracy plot.
#
#   deploy/local/demo.sh [DATASET_DIR] [extra `cascade demo` options, e.g. --target-accuracy 0.87]
#
# DATASET_DIR holds train.csv and test.csv (text, label); ../shared/datasets/banking77 by default.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"

bash "$root/deploy/local/up.sh"  # which also makes the Redis login (ensure_redis)
use_local_redis  # the same Redis login as the stack's worker
cd "$root"
"$root/.venv/bin/cascade" demo "$@"

data="${1:-$root/../shared/datasets/banking77}"
case "$data" in -*) data="$root/../shared/datasets/banking77" ;; esac
if [ -f "$data/llm_answers/test_gpt4.csv" ]; then
  echo
  echo "3. The same trade with GPT-4's RECORDED answers on Banking77 (bench/replay_llm.py replays them; the specialist,"
  echo "   queues, worker and policies are real). Every LLM figure below comes from those recorded answers."
  "$root/.venv/bin/python" -m bench.cascade_value --data "$data" --splits 20 --out "$root/bench/out/demo-recorded-gpt4"
fi
