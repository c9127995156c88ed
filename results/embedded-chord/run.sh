#!/bin/sh
# results/embedded-chord: CHORD beside GRPO at the same sampled budget, 3 seeds. GRPO online as its recipe runs it in
# results/embedded-sweep (groups of 8, 50 rounds of 10 world train prompts x 8 sampled by the current policy, each
# round's 2 steps going once through every sample it trains on: 4,000 responses, the dataset's budget), at the rate
# that sweep chose on valid (5e-5); CHORD the same rounds with the world's demonstrations of the first 1,000 train
# prompts mixed in (a fifth of each round's examples): CHORD-phi as published (mu = 0.1, phi = p (1 - p)) and
# CHORD-mu (mu from 0.9 down to 0.05 by a cosine over the 100 steps, plain NLL), at the same rate.
# Run from the repository root: results/embedded-chord/run.sh
# Expected on an idle 2-core machine: ~23 min (collect ~1 min; 9 runs of 50 rounds of ~2 min each, from
# results/embedded-sweep's GRPO runs, CHORD's a fifth more tokens to train; 12 evaluations of ~19 s). The variables
# below shrink it for a smoke test only, e.g.
#   OUT=/tmp/smoke PROMPTS=20 STEPS=2 ROUNDS=2 SEEDS=0 PROBLEMS=4 K=1 EXPERTS=16 results/embedded-chord/run.sh
set -e
R=${OUT:-results/embedded-chord}
ROUNDS=${ROUNDS:-50}
STEPS=${STEPS:-100}
mkdir -p "$R"
[ -f "$R/expert/manifest.json" ] || bin/import --source world:train --prompts "${EXPERTS:-1000}" --out "$R/expert"
cat > "$R/runs.yaml" <<YAML
# The runs of results/embedded-chord (written by its run.sh, which holds the command)
- {name: grpo, learner: grpo, rounds: $ROUNDS, n: 8, batch_size: round, flags: {lr: 5.0e-5}}
- {name: chord, learner: chord, rounds: $ROUNDS, n: 8, batch_size: round, flags: {lr: 5.0e-5, expert_data: $R/expert}}
- {name: chord_mu, learner: chord, rounds: $ROUNDS, n: 8, batch_size: round,
   flags: {lr: 5.0e-5, expert_data: $R/expert, mu_peak: 0.9, mu_valley: 0.05, mu_decay_steps: $STEPS, token_weight: none}}
YAML
bin/compare --out "$R" --runs "$R/runs.yaml" --prompts "${PROMPTS:-1000}" --seeds "${SEEDS:-0,1,2}" \
    --steps "$STEPS" --batch-size 16 --benchmarks test-id --k "${K:-4}" ${PROBLEMS:+--problems "$PROBLEMS"} --force
