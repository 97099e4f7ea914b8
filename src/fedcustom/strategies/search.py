"""Score search: the server side of federated discrete prompt search (methods/prompt_search.py).

Clients return a score per candidate (their accuracy on a sample of their data). The server takes
the example-weighted mean of the scores, names the best candidate the global prompt, and proposes
the next candidate set: the `keep` best (re-scored next round on new samples, so a lucky score
does not stick) plus mutations of them, each changing the template or one label word to another
index of its pool. Candidates are indices only: the server never sees a template or word, let
alone client text. Mutations are seeded by (seed, round), so a run is reproducible and resumable.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from fedcustom.core.config import check, opt
from fedcustom.core.registry import STRATEGIES
from fedcustom.core.types import State, Update
from fedcustom.strategies.base import Strategy


@dataclass(frozen=True)
class ScoreSearchOptions:
    candidates: int = opt(8, "candidates proposed for every round after the first")
    keep: int = opt(2, "best candidates carried into the next round, where they are scored again")
    template_rate: float = opt(0.5, "chance that a mutation changes the template rather than a label word")
    seed: int = opt(0, "seed of the mutations")

    def __post_init__(self) -> None:
        check(self.candidates >= 1, "candidates", "an integer >= 1")
        check(1 <= self.keep <= self.candidates, "keep", "an integer in [1, candidates]")
        check(0 <= self.template_rate <= 1, "template_rate", "a number in [0, 1]")


def mean_scores(candidates: torch.Tensor, updates: list[Update]) -> tuple[torch.Tensor, int]:
    """Example-weighted mean score per candidate (float64) over the updates that scored exactly
    `candidates`, and how many updates were left out because they scored something else."""
    usable = [(u.state["scores"].double(), u.examples) for u in updates
              if torch.equal(u.state["candidates"], candidates)]
    if not usable:
        return torch.full((len(candidates),), float("nan"), dtype=torch.float64), len(updates)
    total = float(sum(n for _, n in usable))
    return sum(scores * (n / total) for scores, n in usable), len(updates) - len(usable)  # type: ignore[return-value]


def mutate(parent: list[int], pools: list[int], template_rate: float, rng: np.random.Generator) -> list[int]:
    """`parent` with one position moved to another index of its pool (position 0: the template)."""
    words = [p for p in range(1, len(pools)) if pools[p] > 1]
    if pools[0] > 1 and (not words or rng.random() < template_rate):
        pos = 0
    elif words:
        pos = int(rng.choice(words))
    else:
        return list(parent)  # every pool has one entry: nothing to change
    new = int(rng.integers(pools[pos] - 1))
    child = list(parent)
    child[pos] = new + (new >= parent[pos])  # any index but the parent's
    return child


def propose(elites: list[list[int]], pools: list[int], size: int, template_rate: float,
            rng: np.random.Generator) -> list[list[int]]:
    """The elites, then distinct mutations of them (round-robin from the best) up to `size`."""
    out = [list(e) for e in elites]
    seen = {tuple(e) for e in out}
    capacity = int(np.prod(pools))
    attempts = 0
    while len(out) < min(size, capacity) and attempts < 100 * size:
        child = mutate(elites[attempts % len(elites)], pools, template_rate, rng)
        attempts += 1
        if tuple(child) not in seen:
            seen.add(tuple(child))
            out.append(child)
    return out


@STRATEGIES.register("score-search")
class ScoreSearch(Strategy):
    summary = "prompt search: example-weighted mean of candidate scores, next candidates by mutating the best"
    accepts = frozenset({"scores"})
    Options = ScoreSearchOptions
    options: ScoreSearchOptions

    def __init__(self, options: ScoreSearchOptions) -> None:
        super().__init__(options)
        self.rounds_done = 0
        self.last: dict[str, Any] = {}

    def aggregate(self, global_state: State, updates: list[Update]) -> State:
        candidates = global_state["candidates"]
        scores, mismatched = mean_scores(candidates, updates)
        self.rounds_done += 1
        if bool(torch.isnan(scores).all()):  # no client scored this set: keep everything as it was
            self.last = {"search_mismatched": mismatched}
            return {k: v.clone() for k, v in global_state.items()}
        order = torch.argsort(-scores, stable=True)  # ties: the earlier candidate (the incumbent first)
        elites = [candidates[i].tolist() for i in order[: self.options.keep]]
        rng = np.random.default_rng([self.options.seed, self.rounds_done])
        pools = global_state["pool_sizes"].tolist()
        proposed = propose(elites, pools, self.options.candidates, self.options.template_rate, rng)
        next_scores = torch.zeros(len(proposed), dtype=torch.float64)
        next_scores[: len(elites)] = scores[order[: len(elites)]]  # new candidates: 0 until scored
        best = candidates[order[0]].clone()
        self.last = {"search_best_score": float(scores[order[0]]), "search_best": best.tolist(),
                     "search_candidates": len(candidates), "search_mismatched": mismatched}
        return {"candidates": torch.tensor(proposed, dtype=candidates.dtype), "scores": next_scores,
                "best": best, "pool_sizes": global_state["pool_sizes"].clone()}

    def round_record(self) -> dict[str, Any]:
        return dict(self.last)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"rounds_done": torch.tensor([self.rounds_done])}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.rounds_done = int(state["rounds_done"][0]) if "rounds_done" in state else 0
