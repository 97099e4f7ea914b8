"""How far does a prefix move SmolLM2 before (and after) training? PEFT's random prefix init vs
`method.init = "activations"` (the frozen model's own keys/values for a short public text).

For each variant: test perplexity over the headline tokens, and the mean KL divergence
KL(untuned || prefixed) of the next-token distributions at those positions, on the test set of
the generative study (same config). "At init" uses a freshly initialized prefix; a run folder given
with --run NAME=RUN_DIR adds that run's final centralized (or federated) state after training.

    python experiments/prefix_init.py --config docs/results/generative/runs/cen__method-prefix__seed0/config.toml \
        --run activations=docs/results/generative/runs/cen__method-prefix__seed0 \
        --run random=docs/results/generative/prefix-init/cen-prefix-random --out docs/results/generative/prefix-init
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from fedcustom.core.config import build, load_config
from fedcustom.data import load_task_data
from fedcustom.data.batching import eval_batches
from fedcustom.models.lm import LanguageModel, build_language_model
from fedcustom.core.registry import METHODS
from fedcustom.tasks import TASKS


@torch.inference_mode()
def response_logprobs(model: LanguageModel, data, batch_size: int) -> list[torch.Tensor]:
    """Per batch, log-softmax of the logits that predict a response token: [tokens, vocab]."""
    model.eval()
    out = []
    for batch in eval_batches(data, np.arange(len(data)), batch_size):
        logits = model(batch.input_ids, batch.attention_mask)[:, :-1]
        keep = batch.labels[:, 1:] != -100
        out.append((F.log_softmax(logits[keep], -1), batch.labels[:, 1:][keep]))
    return out


def compare(base: list, tuned: list) -> dict[str, float]:
    kl, nll, n = 0.0, 0.0, 0
    for (p_log, _), (q_log, targets) in zip(base, tuned, strict=True):
        kl += F.kl_div(q_log, p_log, log_target=True, reduction="sum").item()  # KL(p || q)
        nll += -q_log.gather(1, targets[:, None]).sum().item()
        n += len(targets)
    return {"kl_to_untuned": kl / n, "perplexity": math.exp(nll / n)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", required=True, help="a prefix run's config.toml (data, model, method)")
    p.add_argument("--run", action="append", default=[], metavar="INIT=RUN_DIR")
    p.add_argument("--out", required=True)
    args = p.parse_args()
    torch.set_num_threads(1)
    cfg = load_config(args.config)
    data = load_task_data(cfg.data)
    untuned, tokenizer = build_language_model(cfg.model, cfg.generation, cfg.seed)
    test = TASKS["generation"].encode(data.test, tokenizer, cfg)
    bs = cfg.train.eval_batch_size
    base = response_logprobs(untuned, test, bs)
    rows = {"untuned": {"stage": "-", **compare(base, base)}}
    runs = dict(item.split("=", 1) for item in args.run)
    for init in ("random", "activations"):
        options = build(METHODS.get("prefix").Options, {**vars(cfg.method.options), "init": init})
        for stage in ("init", "trained"):
            if stage == "trained" and init not in runs:
                continue
            model, _ = build_language_model(cfg.model, cfg.generation, cfg.seed)
            torch.manual_seed(cfg.seed)
            method = METHODS.get("prefix")(replace(options))
            method.prepare(model)
            if stage == "trained":
                run = Path(runs[init])
                mode = next(m for m in ("centralized", "federated") if (run / m / "state.safetensors").is_file())
                method.set_state(model, load_file(run / mode / "state.safetensors"))
                stage = f"after training ({mode}, {run.name})"
            rows[f"{init} / {stage}"] = {"stage": stage, **compare(base, response_logprobs(model, test, bs))}
            print(init, stage, rows[f"{init} / {stage}"], flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "prefix_init.json").write_text(json.dumps(rows, indent=1) + "\n")
    lines = ["| prefix init / stage | test perplexity | mean KL(untuned ‖ prefixed), nats/token |",
             "|:--|--:|--:|"]
    lines += [f"| {k} | {v['perplexity']:.2f} | {v['kl_to_untuned']:.4f} |" for k, v in rows.items()]
    (out / "prefix_init.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
