#!/bin/sh
# results/embedded-2026: every offline learner on one dataset, judged with paired intervals against sft, for what it
# forgot (held-out NLL) and its entropy, and again after the same online GRPO (README.md there).
# Run from the repository root:  results/embedded-2026/run.sh        (all three parts, one after another)
#                                PART=2 results/embedded-2026/run.sh (one part; each needs the ones before it)
# Each part is the same bin/compare with one more seed (seeds 0; 0,1; 0,1,2): a rerun skips every finished stage,
# so part K adds seed K-1's trainings, evaluations and RL stages, and writes the report over the seeds so far.
# Measured on an idle 2-core machine (README.md there): 56, 51 and 67 minutes for parts 1, 2 and 3.
# The variables below shrink it for a smoke test only (RUNS: another runs file, HELDOUT_TEXT: a small text file for
# the forgetting panel), e.g.
#   OUT=/tmp/smoke RUNS=/tmp/two-runs.yaml PROMPTS=16 STEPS=2 BATCH=2 AFTER_RL=2 HELDOUT_EVERY=1 PROBLEMS=2 K=2 \
#       MAX_TOKENS=48 BENCHMARKS=test-id HELDOUT_TEXT=/tmp/heldout.txt results/embedded-2026/run.sh
set -e
R=${OUT:-results/embedded-2026}
BASE=results/embedded-continuum/bases/steps-2500  # test-id avg@4 56.7: groups of 8 mostly hold right and wrong answers
mkdir -p "$R"
[ "$R" = results/embedded-2026 ] || cp "${RUNS:-results/embedded-2026/runs.yaml}" "$R/runs.yaml"
for part in 1 2 3; do
  [ -z "$PART" ] || [ "$PART" = "$part" ] || continue
  seeds=$(echo "0,1,2" | cut -d, -f1-"$part")
  force=""  # the first time: OUT holds this script and runs.yaml, which bin/compare did not write
  [ -f "$R/compare_config.json" ] || force=--force
  bin/compare $force --out "$R" --model "$BASE" --runs "$R/runs.yaml" --prompts "${PROMPTS:-1000}" --seeds "$seeds" \
      --steps "${STEPS:-100}" --batch-size "${BATCH:-16}" --after-rl "${AFTER_RL:-50}" --reference sft \
      --heldout-every "${HELDOUT_EVERY:-25}" --k "${K:-4}" ${PROBLEMS:+--problems "$PROBLEMS"} \
      ${MAX_TOKENS:+--max-tokens "$MAX_TOKENS"} ${BENCHMARKS:+--benchmarks "$BENCHMARKS"} \
      ${HELDOUT_TEXT:+--heldout-text "$HELDOUT_TEXT"} --backend "${BACKEND:-vllm}"
done
