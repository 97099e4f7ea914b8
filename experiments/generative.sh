#!/bin/sh
# Everything in docs/results/generative (about 75 min on 2 CPU cores shared with other jobs).
# The study and the random-init prefix run were started side by side; then the init
# measurement (needs both finished) and the study report.
set -e
fedcustom() { python -m fedcustom.cli "$@"; }
fedcustom study experiments/generative.toml --output-dir docs/results &
# PEFT's random prefix init, centralized, otherwise the study's prefix run (perplexity only)
fedcustom run docs/results/generative/runs/fed__method-prefix__seed0/config.toml \
    --set 'modes=["centralized"]' --set method.init=random --set name=cen-prefix-random \
    --set output_dir=docs/results/generative/prefix-init \
    --set generation.eval_examples=0 --set generation.show_examples=0
wait
CEN=docs/results/generative/runs/cen__method-prefix__seed0
RANDOM_RUN=$(ls -d docs/results/generative/prefix-init/cen-prefix-random-* | tail -1)
python experiments/prefix_init.py --config "$CEN/config.toml" --run "activations=$CEN" \
    --run "random=$RANDOM_RUN" --out docs/results/generative/prefix-init
fedcustom report docs/results/generative
