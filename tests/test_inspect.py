"""offline-rl inspect: a dataset's token probabilities under a model, against the same figures computed by hand
from the model's whole logits on a hand-made dataset."""

import json
import statistics
import subprocess
import sys

import pytest
import torch

from rollout.dataset import DatasetWriter
from tests.conftest import REPR, ROOT


def test_inspect_reports_the_figures_computed_by_hand(tmp_path, tiny_model_dir, tiny_model):
    model, tokenizer = tiny_model
    eos = tokenizer.eos_token_id
    prompts = ["Mia has 3 apples.", "Tom has 5 coins.", "Ava has 2 books."]
    responses = [(" 3 + 1 = 4. The answer is \\boxed{4}.", True, 1.0), (" 5 - 2 = 3.", False, 1.0),
                 (" wrong", True, 0.0)]  # the second cut at the limit (no EOS), the third rejected
    rows = []
    for i, (prompt, (text, ends, reward)) in enumerate(zip(prompts, responses, strict=True)):
        ids = tokenizer(" " + text)["input_ids"] + [eos] * ends
        rows.append({"prompt_id": f"p{i}", "question": prompt, "gold": "4", "prompt": prompt,
                     "prompt_token_ids": tokenizer(prompt)["input_ids"], "response_token_ids": ids, "response": text,
                     "behavior_logprobs": [-1.0] * len(ids), "sample_idx": 0,
                     "finish_reason": "stop" if ends else "length", "pred": "4", "reward": reward})
    writer = DatasetWriter(tmp_path / "data", {"model": str(tiny_model_dir), "source": {"kind": "test"},
                                               "sampling": {"temperature": 1.0, "top_p": 1.0}})
    writer.write_shard(rows)
    writer.finish()

    result = subprocess.run([sys.executable, str(ROOT / "bin" / "inspect"), str(tmp_path / "data"), "--view", "all",
                             "--out", str(tmp_path / "out"), "--logit-chunk-size", "3"],
                            capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads((tmp_path / "out" / "inspect.json").read_text())
    assert (tmp_path / "out" / "inspect.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    probs, means, entropies, closing = [], [], [], []
    with torch.no_grad():
        for row in rows:
            ids = torch.tensor([row["prompt_token_ids"] + row["response_token_ids"]])
            logits = model(input_ids=ids).logits[0, len(row["prompt_token_ids"]) - 1 : -1].log_softmax(-1)
            lp = logits.gather(-1, torch.tensor(row["response_token_ids"]).unsqueeze(-1)).squeeze(-1)
            probs += lp.exp().tolist()
            means.append(lp.mean().item())
            entropies.append(-(logits.exp() * logits).sum(-1).mean().item())
            if row["response_token_ids"][-1] == eos:
                closing.append(lp[-1].exp().item())
    assert summary["responses"] == 3 and summary["tokens"] == len(probs)
    tp = summary["token_probability"]
    assert tp["mean"] == pytest.approx(statistics.fmean(probs), abs=1e-5)
    assert tp["share_below_0.1"] == pytest.approx(sum(p < 0.1 for p in probs) / len(probs))
    assert sum(tp["histogram"]["counts"]) == len(probs)
    assert summary["response_mean_logprob"]["mean"] == pytest.approx(statistics.fmean(means), abs=1e-5)
    assert summary["response_mean_entropy"]["mean"] == pytest.approx(statistics.fmean(entropies), abs=1e-5)
    assert summary["eos"]["responses_ending_in_eos"] == 2  # the cut response has no closing EOS
    assert summary["eos"]["mean_probability"] == pytest.approx(statistics.fmean(closing), abs=1e-5)
    assert "tokens" in result.stdout and "EOS weight" in result.stdout
    assert result.stdout.splitlines()[-1].startswith(f"reading: {100 * tp['share_below_0.1']:.1f} % of tokens under")
    assert f"config -> {tmp_path / 'out' / 'config.yaml'}" in result.stderr.splitlines()
    assert not [line for line in result.stderr.splitlines() if REPR.match(line)]

    # the default view is dft's own: the accepted responses only (the rejected one and the cut one left out)
    from offline_rl.inspection import main

    accepted = main([str(tmp_path / "data"), "--out", str(tmp_path / "accepted")])
    assert accepted["responses"] == 1 and accepted["eos"]["responses_ending_in_eos"] == 1


@pytest.mark.parametrize("share, says", [
    (0.30, "more than any of the capability continuum's bases (0.1-1.2 %, all with DFT above SFT): untested"),
    (0.012, "as on the capability continuum's bases (0.1-1.2 %), where DFT beat SFT on every base"),
    (0.001, "as on the capability continuum's bases"),
    (0.0004, "fewer than on the capability continuum's bases (0.1-1.2 %); the most confident gave DFT its largest"),
])
def test_the_reading_places_the_share_of_unlikely_tokens_against_the_continuum(share, says):
    from offline_rl.inspection import reading

    line = reading(share)
    assert line.startswith(f"reading: {100 * share:.1f} % of tokens under p = 0.1, {says}") and "\n" not in line


def test_default_outs_differ_by_model_and_view_and_a_finished_one_is_replaced_only_with_force(
        tmp_path, tiny_model_dir, capfd, monkeypatch):
    import shutil

    from tests.conftest import make_rows
    from tests.test_bad_input import assert_one_line, run_alone, snapshot

    writer = DatasetWriter(tmp_path / "data", {"model": str(tiny_model_dir), "source": {"kind": "test"},
                                               "sampling": {"temperature": 1.0, "top_p": 1.0}})
    writer.write_shard(make_rows())
    writer.finish()
    shutil.copytree(tiny_model_dir, tmp_path / "other")
    monkeypatch.chdir(tmp_path)  # the default OUT is under ./runs
    for args in ([], ["--view", "all"], ["--model", "other"]):
        code, err = run_alone("inspect", ["data", *args], capfd)
        assert code == 0, err
    readings = {p.name: json.loads((p / "inspect.json").read_text()) for p in (tmp_path / "runs").iterdir()}
    assert {name: (r["model"], r["view"], r["responses"]) for name, r in readings.items()} == {
        f"inspect-data-{tiny_model_dir.name}-accepted": (str(tiny_model_dir), "accepted", 3),
        f"inspect-data-{tiny_model_dir.name}-all": (str(tiny_model_dir), "all", 6),
        "inspect-data-other-accepted": ("other", "accepted", 3)}

    out = tmp_path / "runs" / "inspect-data-other-accepted"
    finished = snapshot(out)
    code, err = run_alone("inspect", ["data", "--model", "other", "--view", "all", "--out", str(out)], capfd)
    assert_one_line(code, err, f"{out} holds a finished inspection of data by other (accepted)",
                    "view ('accepted', now 'all')", "--force")
    assert snapshot(out) == finished
    code, err = run_alone("inspect", ["data", "--model", "other", "--view", "all", "--out", str(out), "--force"], capfd)
    assert code == 0, err
    assert json.loads((out / "inspect.json").read_text())["view"] == "all"
