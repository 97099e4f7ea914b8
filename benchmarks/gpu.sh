#!/usr/bin/env bash
# The GPU check (benchmarks/gpu.py) as one command for a machine with a GPU and no network.
#
#   bash benchmarks/gpu.sh --prepare [--no-bnb]   here, with pip's network: the wheels the GPU
#                                                  machine lacks, and the commit, into .whl/
#   bash benchmarks/gpu.sh [--parts ...]           there: installs .whl/ (if present) into a
#                                                  scratch folder, then runs every part
#   bash benchmarks/gpu.sh --dry-run               anywhere: the same code on the CPU, tiny model
#
# The whole script, wheel install included, stops within GPU_CHECK_SECONDS (470: under 8 minutes);
# the JSON is written after every part, to $OUT/gpu.json when OUT is set. PYTHON picks the
# interpreter (default .venv/bin/python if there, else python3). See docs/performance.md.
set -uo pipefail
cd "$(dirname "$0")/.."
START=$SECONDS
CAP=${GPU_CHECK_SECONDS:-470}
WHEELS=.whl
SITE=${GPU_CHECK_SITE:-/tmp/fedcustom-gpu-site}
PY=${PYTHON:-}
if [ -z "$PY" ]; then
    if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi

if [ "${1:-}" = "--prepare" ]; then
    # fedcustom's pins from pyproject.toml (so the GPU runs the tested stack), the base packages the
    # GPU machine's image lacks, and datasets' own needs within its caps. bitsandbytes (43 MB) is
    # the 4-bit part's; the tool carries at most 64 MiB, working tree included.
    pins=$(grep -oE '"(transformers|peft|datasets|flwr-datasets)==[^"]+"' pyproject.toml | tr -d '"')
    extra="tomli-w dill<0.4.2 multiprocess<0.70.20"
    [ "${2:-}" = "--no-bnb" ] || extra="$extra bitsandbytes==0.50.2"
    rm -rf "$WHEELS" && mkdir -p "$WHEELS"
    platforms=""
    for p in manylinux_2_28 manylinux_2_27 manylinux_2_24 manylinux_2_17 manylinux2014 manylinux1; do
        platforms="$platforms --platform ${p}_x86_64"
    done
    # shellcheck disable=SC2086
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "${GPU_PYTHON_VERSION:-3.12}" \
        --implementation cp $platforms -d "$WHEELS" $pins $extra || exit 1
    commit=$(git rev-parse HEAD)
    [ -z "$(git status --porcelain --untracked-files=no)" ] || commit="$commit+dirty"
    echo "$commit" > "$WHEELS/COMMIT"
    ls -1 "$WHEELS"
    echo "gpu.sh: $(du -sm "$WHEELS" | cut -f1) MiB in $WHEELS/ (commit $commit); carry it: carry=[\"$WHEELS\"]"
    git check-ignore -q "$WHEELS" || echo "gpu.sh: warning: $WHEELS/ is not ignored by git"
    exit 0
fi

export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1  # nothing to reach: fail fast
export TQDM_DISABLE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
if compgen -G "$WHEELS/*.whl" > /dev/null; then
    rm -rf "$SITE"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
        "$WHEELS"/*.whl || echo "gpu.sh: installing $WHEELS/ failed; going on with what is installed"
    export PYTHONPATH="$SITE"
fi
export PYTHONPATH="$PWD/src:$PWD${PYTHONPATH:+:$PYTHONPATH}"
check='import torch, transformers, peft, fedcustom.runs.experiment
print(f"gpu.sh: torch {torch.__version__} (CUDA {torch.version.cuda}), transformers {transformers.__version__}, peft {peft.__version__}")'
if ! "$PY" -c "$check"; then
    # The pinned transformers/peft may not fit the image's other packages: fall back to the image's.
    if [ -d "$SITE" ] && compgen -G "$SITE/transformers*" > /dev/null; then
        echo "gpu.sh: fedcustom does not import with the carried transformers/peft; trying the image's"
        rm -rf "$SITE"/transformers* "$SITE"/peft*
        "$PY" -c "$check" || echo "gpu.sh: fedcustom still does not import; the parts will say why"
    fi
fi
command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader

left=$((CAP - (SECONDS - START)))
# The parts share what is left minus a margin; `timeout` is the last guard (the JSON so far stays).
timeout -k 10 "$left" "$PY" -m benchmarks gpu --budget $((left - 25)) "$@"
rc=$?
[ $rc -eq 124 ] && echo "gpu.sh: stopped at the ${CAP} s cap"
echo "gpu.sh: exit $rc after $((SECONDS - START)) s"
exit $rc
