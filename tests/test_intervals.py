"""Paired intervals, the forgetting panel and the policy's entropy: the maths on hand-made results, and the report's
sections read from evaluations on disk."""

import csv
import json
import math

import numpy as np
import pytest

from offline_rl.experiments import intervals
from offline_rl.experiments.report import honest_sections, rereport


def test_the_bootstrap_centre_is_the_mean_difference_and_its_width_the_analytic_one():
    # one seed, 400 problems: 100 gain a point, 60 lose one, 240 tie. The bootstrap's variance of the mean is the
    # plug-in variance over n: sigma^2 = E[d^2] - E[d]^2 = 160/400 - 0.1^2 = 0.39, so the 95 % interval is about
    # 2 x 1.96 x sqrt(0.39 / 400) = 0.1224 wide around 0.1
    reference = np.zeros((1, 400))
    model = np.array([[1.0] * 100 + [-1.0] * 60 + [0.0] * 240])
    d = intervals.paired_bootstrap(model, reference)
    assert d.difference == pytest.approx(0.1)
    assert (d.low + d.high) / 2 == pytest.approx(0.1, abs=0.01)
    assert d.high - d.low == pytest.approx(2 * 1.96 * math.sqrt(0.39 / 400), rel=0.08)
    assert d.excludes_zero and d.method == intervals.BOOTSTRAP and (d.seeds, d.problems) == (1, 400)
    assert intervals.paired_bootstrap(model, reference) == d  # seeded: a report is the same every time it is written


def test_pairing_shuffling_one_runs_problems_widens_the_interval():
    # problems differ a lot in difficulty and both models share it; the model is a little better on every problem
    rng = np.random.default_rng(0)
    difficulty = rng.uniform(0, 1, size=(3, 300))
    reference, model = difficulty, np.clip(difficulty + 0.02, 0, 1)
    paired = intervals.paired_bootstrap(model, reference)
    shuffled = intervals.paired_bootstrap(model[:, rng.permutation(300)], reference)
    assert paired.difference == pytest.approx(shuffled.difference)  # the same mean...
    assert paired.excludes_zero and not shuffled.excludes_zero  # ...but only the pairing sees it
    assert shuffled.high - shuffled.low > 5 * (paired.high - paired.low)


def test_the_seeds_are_resampled_with_the_problems():
    # the same per-problem differences, but one seed's run gained 0.2 more than the others': wider than without
    base = np.tile(np.linspace(0, 1, 200), (3, 1))
    even = intervals.paired_bootstrap(base + 0.1, base)
    uneven = intervals.paired_bootstrap(base + np.array([[0.0], [0.1], [0.2]]), base)
    assert even.difference == pytest.approx(uneven.difference)
    assert uneven.high - uneven.low > 10 * (even.high - even.low)


def test_t_over_seeds_by_hand():
    # differences 1, 2, 3: mean 2, std 1, t(0.975, 2) = 4.303 -> 2 ± 4.303 / sqrt(3) = 2 ± 2.484
    d = intervals.seeds_t([1.5, 3.0, 4.5], [0.5, 1.0, 1.5])
    assert (d.difference, d.low, d.high) == pytest.approx((2.0, 2 - 2.4844, 2 + 2.4844), abs=1e-3)
    assert d.method == intervals.SEEDS_T and d.problems is None and d.excludes_zero is False
    assert intervals.seeds_t([0.3], [0.2]) is None  # one seed: no interval


def test_the_samples_own_log_probs_estimate_the_entropy():
    # E[-log q(x)] over x ~ q is the entropy of q: the mean over many sampled tokens comes near it
    from offline_rl.evaluate import mean_token_entropy

    q = np.array([0.7, 0.2, 0.1])
    rng = np.random.default_rng(0)
    samples = [list(np.log(q[rng.choice(3, size=50, p=q)])) for _ in range(200)]
    assert mean_token_entropy(samples) == pytest.approx(-(q * np.log(q)).sum(), rel=0.03)
    assert mean_token_entropy([[]]) is None


def evaluation(path, k, correct, benchmark="test-id", nll=None, entropy=None, kept=True, problems="abc"):
    """A hand-made evaluation directory: results.json with (or without) its per-problem counts."""
    correct = [int(c) for c in correct]
    metrics = {"problems": len(correct), f"avg@{k}": sum(correct) / (k * len(correct)),
               f"pass@{k}": sum(c > 0 for c in correct) / len(correct), "mean_response_tokens": 10.0,
               "prompts_too_long": 0}
    if kept:
        metrics |= {"correct_per_problem": correct, "problem_ids": problems}
    if entropy is not None:
        metrics["entropy"] = entropy
    results = {"k": k, "benchmarks": {benchmark: metrics}}
    if nll is not None:
        results["heldout"] = {"text": "world:pretrain", "documents": 4, "tokens": 100, "nll": nll, "entropy": 0.5}
    path.mkdir(parents=True)
    (path / "results.json").write_text(json.dumps(results))


def test_the_report_sections_from_evaluations_on_disk(tmp_path):
    rng = np.random.default_rng(1)
    base = rng.integers(0, 3, size=60)
    for seed in (0, 1):
        evaluation(tmp_path / "evals" / f"base-s{seed}", 2, base, nll=0.50, entropy=0.40)
        evaluation(tmp_path / "evals" / f"sft-s{seed}", 2, np.minimum(base + 1, 2), nll=0.60 + seed / 100, entropy=0.30)
        evaluation(tmp_path / "evals" / f"dft-s{seed}", 2, base, nll=0.52, entropy=0.35 + seed / 100, kept=seed == 0)
    lines, gains = honest_sections(tmp_path, {"base": "base", "sft": "sft", "dft": "dft"}, [0, 1], ["test-id"], 2,
                                   "sft")
    text = "\n".join(lines)
    assert "## Differences against sft" in text and "## Differences against base" in text
    assert "paired bootstrap (2000 resamples of the problems and the seeds together" in text
    assert "Student t intervals over the seeds' paired differences (marked †)" in text  # dft s1 kept no problems
    rows = list(csv.DictReader((tmp_path / "differences.csv").open()))
    by = {(r["reference"], r["model"], r["metric"]): r for r in rows}
    sft_gain = by["base", "sft", "avg@2"]
    assert float(sft_gain["difference"]) == pytest.approx(np.mean(np.minimum(base + 1, 2) - base) / 2)
    assert sft_gain["excludes_zero"] == "True" and sft_gain["method"] == intervals.BOOTSTRAP
    assert sft_gain["resamples"] == "2000" and sft_gain["problems"] == "60" and sft_gain["seeds"] == "2"
    assert by["sft", "dft", "avg@2"]["method"] == intervals.SEEDS_T  # one of its evaluations kept no problems
    assert ("sft", "base", "pass@2") in by and ("base", "sft", "pass@2") not in by  # pass@k against the reference
    assert gains["sft", "test-id"].difference == pytest.approx(float(sft_gain["difference"]))
    # the forgetting panel: each model's held-out NLL and entropy, and the change from the base
    forgetting = text[text.index("## Forgetting and entropy"):]
    assert "`world:pretrain` (4 documents, 100 tokens scored)" in forgetting
    assert "| base | 0.500 ± 0.000 | – | 0.400 ± 0.000 | – |" in forgetting
    assert "| sft | 0.605 ± 0.007 | +0.105 [+0.041, +0.169] * | 0.300 ± 0.000 |" in forgetting  # 2 seeds: t = 12.706
    assert (tmp_path / "plots" / "forgetting.png").read_bytes()[:4] == b"\x89PNG"


def test_a_committed_comparison_is_reported_again_from_its_evaluations(tmp_path):
    # as committed before the intervals: an older compare_config.json, aggregates only, a transfer table
    (tmp_path / "compare_config.json").write_text(json.dumps({"learners": "sft,dft,dft_x4=dft", "seeds": "0,1,2",
                                                              "k": 2}))
    report = ["# Offline RL learners compared", "", "## avg@2 (%)", "", "| model |", "",
              "## Transfer: gain over the base model (avg@2 points; * beyond two pooled seed stds)", "", "| dft | +1 |",
              "", "## pass@2 (%)", "", "| model |", ""]
    (tmp_path / "report.md").write_text("\n".join(report))
    for seed, (b, s, d) in enumerate([(10, 14, 12), (12, 15, 12), (11, 16, 14)]):
        for name, hits in (("base", b), ("sft", s), ("dft", d), ("dft_x4", d)):
            evaluation(tmp_path / "evals" / f"{name}-s{seed}", 2, [1] * hits + [0] * (20 - hits), kept=False)
    written = rereport(tmp_path)
    assert written["reference"] == "sft"
    headings = [line for line in (tmp_path / "report.md").read_text().splitlines() if line.startswith("## ")]
    assert headings == ["## avg@2 (%)", "## Differences against sft (points, model minus sft)",
                        "## Differences against base (points, model minus base)", "## pass@2 (%)"]
    text = (tmp_path / "report.md").read_text()
    assert "95 % Student t intervals over the seeds' paired differences: these evaluations kept no per-problem" in text
    # dft - sft per seed: (12-14, 12-15, 14-16)/40 = -5, -7.5, -5 points: -5.8 ± 4.303 x 1.443 / sqrt(3)
    assert "| dft | -5.8 [-9.4, -2.2] * |" in text
    assert rereport(tmp_path, "base")["reference"] == "base"  # again, against another run: the sections replaced
    assert (tmp_path / "report.md").read_text().count("## Differences against") == 1


def test_held_out_nll_and_entropy_are_the_full_logits_ones(tiny_model):
    # measure() projects in chunks; the same figures from the model's whole logits, by hand
    import torch

    from offline_rl.heldout import HeldoutText, encode, measure

    model, tokenizer = tiny_model
    documents = (("Question: Mia has 3 apples.\nAnswer:", " 3 + 1 = 4."), ("", "Tom has 5 cards. Then"))
    text = HeldoutText("t", documents, True)
    examples = encode(text, tokenizer)
    assert examples[0].response_token_ids[-1] == tokenizer.eos_token_id and len(examples) == 2
    measured = measure(model, examples, tokenizer.eos_token_id, "cpu", chunk_size=3)
    nll = entropy = tokens = 0
    with torch.no_grad():
        for e in examples:
            ids = torch.tensor([e.prompt_token_ids + e.response_token_ids])
            logprobs = model(input_ids=ids).logits[0, len(e.prompt_token_ids) - 1 : -1].log_softmax(-1)  # [n, V]
            nll -= logprobs.gather(-1, torch.tensor(e.response_token_ids)[:, None]).sum().item()
            entropy -= (logprobs.exp() * logprobs).sum().item()
            tokens += len(e.response_token_ids)
    assert measured == pytest.approx({"nll": nll / tokens, "entropy": entropy / tokens, "tokens": tokens}, rel=1e-5)


def test_world_pretrain_held_out_text_is_in_no_split():
    import re

    from offline_rl.embedded import world
    from offline_rl.heldout import DOCUMENTS, load_heldout

    heldout = load_heldout("world:pretrain")
    assert len(heldout.documents) == DOCUMENTS and heldout.end_of_text
    trained_on = {p.prompt for s in ("pretrain", "train") for p in world.load_split(s)}
    assert not trained_on & {context for context, _ in heldout.documents}
    steps = [re.findall(r"(\d+) ([+-]) (\d+) = (\d+)\.", text) for _, text in heldout.documents]
    slipped = sum(any(int(a) + (1 if op == "+" else -1) * int(k) != int(r) for a, op, k, r in s) for s in steps)
    assert 0.2 < slipped / DOCUMENTS < 0.5  # the pretrain split's careless slips (35 %) are in it too
