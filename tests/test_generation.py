"""Generation tasks: data loading and its errors, the response-only label mask and loss, ROUGE-L /
exact match, and `fedcustom generate` with a saved adapter (tiny random Llama)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fedcustom.cli import main
from fedcustom.core.config import DataConfig, GenerationConfig, ModelConfig
from fedcustom.core.errors import UserError
from fedcustom.data import load_task_data
from fedcustom.data.batching import eval_batches
from fedcustom.data.pairs import IGNORE, encode_pairs, frame
from fedcustom.models.evaluation import generation_scores
from fedcustom.models.lm import build_language_model
from fedcustom.runs.experiment import run_experiment


@pytest.fixture(scope="module")
def tiny_lm(tiny_llama_dir: Path):
    return build_language_model(ModelConfig(name=str(tiny_llama_dir)), GenerationConfig(), 0)


def test_user_pairs_load_as_generation_data(pairs_jsonl: Path) -> None:
    data = load_task_data(DataConfig(dataset=str(pairs_jsonl), label_column="group"))
    assert data.kind == "generation" and data.label_names == ["g0", "g1", "g2"]
    assert set(data.train.column_names) == {"text", "label", "target"}
    assert len(data.train) + len(data.test) == 60


def test_bbc_headlines_pairs_article_body_with_its_headline() -> None:
    data = load_task_data(DataConfig(dataset="bbc-headlines", max_test_examples=5))
    assert data.kind == "generation" and len(data.label_names) == 5
    row = data.test[0]
    assert row["text"].startswith("Write a short headline") and row["target"] not in row["text"]


@pytest.mark.parametrize(("rows", "task", "message"), [
    ([{"question": "a", "answer": "b"}], "generation", "no prompt column 'prompt'"),
    ([{"prompt": "a", "reply": "b"}], "generation", "no response column 'response'"),
    ([{"prompt": "a", "response": ""}], "auto", "row(s) with an empty 'response'"),
    ([], "generation", "no rows"),
])
def test_bad_generation_data_is_a_user_error(tmp_path: Path, rows: list, task: str, message: str) -> None:
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(UserError, match=re.escape(message)):
        load_task_data(DataConfig(dataset=str(path), task=task))


def test_label_mask_covers_response_and_end_token_only(tiny_lm) -> None:
    _, tokenizer = tiny_lm
    gen = GenerationConfig()
    data = encode_pairs(["say hi", "a longer prompt to say bye"], ["hi there", "bye"], tokenizer, 64, gen)
    before, after = frame(tokenizer, gen)
    for i, response in enumerate(["hi there", "bye"]):
        start, length = int(data.prompt_lengths[i]), int(data.lengths[i])
        expected = tokenizer(response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        assert data.labels[i][start:length].tolist() == expected
        assert (data.labels[i][:start] == IGNORE).all() and (data.labels[i][length:] == IGNORE).all()
        assert data.input_ids[i, :len(before)].tolist() == before
        assert data.input_ids[i, start - len(after):start].tolist() == after


def test_truncation_cuts_the_prompt_content_not_the_template(tiny_lm) -> None:
    _, tokenizer = tiny_lm
    gen = GenerationConfig(max_response_tokens=4)
    data = encode_pairs(["word " * 200], ["one two three four five six"], tokenizer, 48, gen)
    _, after = frame(tokenizer, gen)
    start = int(data.prompt_lengths[0])
    assert int(data.lengths[0]) == 48
    assert data.input_ids[0, start - len(after):start].tolist() == after
    assert data.labels[0][start:48].tolist()[-1] == tokenizer.eos_token_id  # 3 response tokens + end


def test_loss_is_cross_entropy_over_response_tokens_only(tiny_lm) -> None:
    model, tokenizer = tiny_lm
    data = encode_pairs(["say hi", "a longer prompt to say bye"], ["hi there", "bye"], tokenizer, 64,
                        model.gen)
    batch = next(eval_batches(data, np.arange(2), 8))
    model.eval()
    with torch.no_grad():
        logits = model.encoder(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        terms = []
        for i in range(2):
            start, length = int(data.prompt_lengths[i]), int(data.lengths[i])
            for t in range(start, length):  # token t is predicted at position t - 1
                terms.append(F.cross_entropy(logits[i, t - 1], batch.input_ids[i, t]))
        assert torch.allclose(model.loss(batch), torch.stack(terms).mean(), atol=1e-5)


def test_rouge_l_and_exact_match() -> None:
    scores = generation_scores(["Stocks fall in London", "totally different"],
                               ["stocks fall in London!", "Rates rise again"])
    assert scores["exact_match"] == 0.5
    assert scores["rougeL"] == pytest.approx(0.5)


def test_generation_data_needs_a_generation_method(tiny_lm_config) -> None:
    with pytest.raises(UserError, match="cannot train on generation data"):
        run_experiment(tiny_lm_config(method={"name": "bbpt"}), log=lambda *_: None)


def test_generate_with_a_saved_adapter_matches_plain_peft(tiny_lm_config, tiny_llama_dir: Path,
                                                          capsys: pytest.CaptureFixture) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cfg = tiny_lm_config(modes=["centralized"], federation={"rounds": 1},
                         generation={"eval_examples": 0, "show_examples": 0, "max_new_tokens": 6})
    path = run_experiment(cfg, log=lambda *_: None)["centralized"].path.parent
    assert main(["generate", "--adapter", str(path), "echo the last two words: fine warm"]) == 0
    ours = capsys.readouterr().out.strip()

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_llama_dir),
                                      path / "centralized" / "adapter")
    messages = [{"role": "user", "content": "echo the last two words: fine warm"}]
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                        return_dict=True)["input_ids"]
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=6,
                         do_sample=False, pad_token_id=tokenizer.pad_token_id)
    assert ours == tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip()

    from fedcustom.reporting.report import write_report

    report = write_report([path]).read_text()  # one run's report leads with perplexity too
    assert "round-0 ppl" in report and (path / "perplexity.png").is_file()


def test_generate_names_a_bad_run_folder(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["generate", "--adapter", str(tmp_path), "hi"]) == 2
    assert "not a fedcustom run folder" in capsys.readouterr().err


def test_study_report_of_a_generation_study(tiny_lm_config, tmp_path: Path) -> None:
    import tomli_w

    from fedcustom.core.config import to_dict
    from fedcustom.reporting.study_report import write_study_report
    from fedcustom.runs.study import load_study, run_study

    base = to_dict(tiny_lm_config(federation={"rounds": 1}, method={"name": "lora"}))
    base.pop("name")
    path = tmp_path / "gen-study.toml"
    path.write_text(tomli_w.dumps({"study": {"name": "gen"}, "base": base,
                                   "grid": {"method": {"lora": {"method.name": "lora"}}}}))
    out = run_study(load_study(path), tmp_path / "studies", log=lambda *_: None)
    report = write_study_report(out).read_text()
    assert "round-0 ppl" in report and "## Generated examples" in report
    assert (out / "perplexity.png").is_file() and (out / "rougeL.png").is_file()
    assert "accuracy" not in report.lower()
