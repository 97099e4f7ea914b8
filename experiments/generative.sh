#!/bin/sh
# Everything in docs/results/generative (about 80 min on an idle 2-core machine): the study, the
# centralized prefix run with PEFT's random init (perplexity only), the init measurement (needs
# both) and the study report.
set -e
fedcustom() { python -m fedcustom.cli "$@"; }
fedcustom study experiments/generative.toml --output-dir docs/results
CEN=docs/results/generative/runs/cen__method-prefix__seed0
fedcustom run "$CEN/config.toml" --set method.init=random --set name=cen-prefix-random \
    --set output_dir=docs/results/generative/prefix-init \
    --set generation.eval_examples=0 --set generation.show_examples=0
RANDOM_RUN=$(ls -d docs/results/generative/prefix-init/cen-prefix-random-* | tail -1)
python experiments/prefix_init.py --config "$CEN/config.toml" --run "activations=$CEN" \
    --run "random=$RANDOM_RUN" --out docs/results/generative/prefix-init
fedcustom report docs/results/generative
