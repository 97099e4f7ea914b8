"""Metrics of a global model on held-out data: accuracy, macro-F1 and loss for classification;
ROUGE-L and exact match of generated text (perplexity comes with the language model, models/lm.py)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import f1_score
from torch import nn

from fedcustom.core.device import model_device
from fedcustom.core.extras import require
from fedcustom.data.batching import Encoded, eval_batches


@torch.inference_mode()
def evaluate_classifier(
    model: nn.Module, data: Encoded, batch_size: int, rows: np.ndarray | None = None
) -> dict[str, float]:
    rows = np.arange(len(data)) if rows is None else rows
    model.eval()
    device = model_device(model)
    preds, labels, loss_sum = [], [], 0.0
    for batch in eval_batches(data, rows, batch_size):
        on_device = batch.to(device)
        logits = model(on_device.input_ids, on_device.attention_mask).float()
        loss_sum += F.cross_entropy(logits, on_device.labels, reduction="sum").item()
        preds.append(logits.argmax(-1).cpu())
        labels.append(batch.labels)
    y_pred, y_true = torch.cat(preds).numpy(), torch.cat(labels).numpy()
    return {
        "accuracy": float((y_pred == y_true).mean()),
        "macro_f1": float(f1_score(y_true, y_pred, average="macro", zero_division=0)),
        "loss": loss_sum / len(y_true),
    }


def normalize(text: str) -> str:
    """Lowercase, punctuation dropped, whitespace collapsed: what exact match compares."""
    return " ".join("".join(c for c in text.lower() if c.isalnum() or c.isspace()).split())


def generation_scores(predictions: list[str], references: list[str]) -> dict[str, float]:
    """Mean ROUGE-L F1 (rouge-score, stemmed) and normalized exact match over the pairs."""
    rouge_scorer = require("rouge_score.rouge_scorer", "ROUGE-L of generated text")
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    rouge = [scorer.score(ref, pred)["rougeL"].fmeasure for pred, ref in zip(predictions, references,
                                                                             strict=True)]
    exact = [normalize(p) == normalize(r) for p, r in zip(predictions, references, strict=True)]
    return {"rougeL": float(np.mean(rouge)), "exact_match": float(np.mean(exact))}
