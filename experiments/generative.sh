#!/bin/sh
# Everything in docs/results/generative, in order (about 45 min on 2 shared CPU cores):
# the study, a centralized prefix run with PEFT's random init (the init comparison), then
# the init measurement and the study report.
set -e
fedcustom() { python -m fedcustom.cli "$@"; }
fedcustom study experiments/generative.toml --output-dir docs/results
CEN=docs/results/generative/runs/cen__method-prefix__seed0
fedcustom run "$CEN/config.toml" --set method.init=random --set name=cen-prefix-random \
    --set output_dir=docs/results/generative/prefix-init
RANDOM_RUN=$(ls -d docs/results/generative/prefix-init/cen-prefix-random-* | tail -1)
python experiments/prefix_init.py --config "$CEN/config.toml" --run "activations=$CEN" \
    --run "random=$RANDOM_RUN" --out docs/results/generative/prefix-init
fedcustom report docs/results/generative
