#!/bin/sh
# results/embedded-learners: psft, eaft and pear beside sft, dft and rft (runs.yaml), 3 seeds, 100 steps of 16,
# test-id reported, rates chosen on valid. Run from the repository root: results/embedded-learners/run.sh
# Expected on an idle 2-core machine: ~26 min (collect ~1 min; 27 trainings of ~34 s; 30 evaluations of ~19 s,
# from results/embedded-sweep's wall times). The variables below shrink it for a smoke test only, e.g.
#   OUT=/tmp/smoke PROMPTS=24 STEPS=2 BATCH=4 SEEDS=0 PROBLEMS=4 K=1 results/embedded-learners/run.sh
set -e
R=${OUT:-results/embedded-learners}
mkdir -p "$R"
[ "$R" = results/embedded-learners ] || cp results/embedded-learners/runs.yaml "$R/runs.yaml"
bin/compare --out "$R" --runs "$R/runs.yaml" --prompts "${PROMPTS:-1000}" --seeds "${SEEDS:-0,1,2}" \
    --steps "${STEPS:-100}" --batch-size "${BATCH:-16}" --benchmarks test-id --k "${K:-4}" \
    ${PROBLEMS:+--problems "$PROBLEMS"} --force
