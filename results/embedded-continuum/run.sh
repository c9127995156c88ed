#!/bin/sh
# results/embedded-continuum: the same comparison on three bases of different strength (README.md there).
# The bases are bin/make-base at 400, 1000 (the shipped model) and 2500 pretraining steps; the two not shipped are
# committed in bases/ and built here only when missing. Run from the repository root: results/embedded-continuum/run.sh
set -e
R=results/embedded-continuum
for steps in 400 2500; do
  [ -f $R/bases/steps-$steps/model.safetensors ] || bin/make-base --steps $steps --out $R/bases/steps-$steps
done
for base in steps-400=$R/bases/steps-400 steps-1000=offline_rl/embedded/assets/base-model steps-2500=$R/bases/steps-2500; do
  name=${base%%=*}; model=${base#*=}
  bin/compare --out $R/$name --model $model --runs $R/runs.yaml --seeds 0,1,2 --steps 100 --batch-size 16 \
      --benchmarks test-id
  bin/inspect $R/$name/demonstrations --model $model --out $R/$name/inspect-demonstrations
  bin/inspect $R/$name/data --model $model --out $R/$name/inspect-samples
done
.venv/bin/python -m offline_rl.experiments.continuum $R
