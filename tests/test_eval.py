"""bin/eval: the metrics against brute force and hand-made cases, end to end on files and the shared benchmarks."""

import itertools
import json
import math
from pathlib import Path

import pyarrow.parquet as pq
import pytest

import rewards
from offline_rl.evaluate import SHARED_BENCHMARKS, majority_correct, pass_at_k, pass_ks
from rewards.normalize import gold_answer
from tests.conftest import run_bin

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "benchmarks"


@pytest.mark.parametrize("n", range(1, 7))
def test_pass_at_k_equals_brute_force_over_all_k_subsets(n):
    for c in range(n + 1):
        samples = [1] * c + [0] * (n - c)
        for k in range(1, n + 1):
            subsets = list(itertools.combinations(samples, k))
            brute = sum(any(s) for s in subsets) / len(subsets)
            assert pass_at_k(n, c, k) == pytest.approx(brute, abs=1e-12), (n, c, k)


def test_pass_at_k_stays_exact_for_large_n():
    assert pass_at_k(1000, 1, 1) == pytest.approx(1e-3)
    assert pass_at_k(1000, 0, 500) == 0.0
    assert pass_at_k(1000, 501, 500) == 1.0  # every 500-subset holds a correct sample
    assert pass_ks(8) == [1, 2, 4, 8] and pass_ks(6) == [1, 2, 4, 6] and pass_ks(1) == [1]


@pytest.mark.parametrize("preds, correct, expected", [
    (["3", "3", "5", "7"], [1, 1, 0, 0], 1.0),  # plain majority
    (["5", "3", "5", "3"], [0, 1, 0, 1], 0.0),  # tie: the answer seen first wins
    (["3", "5", "5", "3"], [1, 0, 0, 1], 1.0),  # the same tie, the other order
    (["1/2", "\\frac{1}{2}", "0.3", "0.3", "0.3"], [1, 1, 0, 0, 0], 0.0),  # wrong answer out-voted the right one
    (["1/2", "\\frac{1}{2}", "0.5", "0.3", "0.3"], [1, 1, 1, 0, 0], 1.0),  # equal right answers vote together
    (["", "", "", "4"], [0, 0, 0, 1], 1.0),  # no answer, no vote
    (["", ""], [0, 0], 0.0),
    (["x = 4", "x=4", "7"], [0, 0, 1], 0.0),  # whitespace does not split a wrong answer's votes
])
def test_majority_vote_on_hand_made_answer_sets(preds, correct, expected):
    assert majority_correct(preds, [float(c) for c in correct]) == expected


@pytest.mark.parametrize("preds, correct, expected", [
    (["1/3", "0.5", "\\frac{1}{2}"], [1, 0, 0], 0.0),  # the majority, 1/2, is wrong: it wins 2 to 1
    (["2", "0.5", "1/2", "2", "\\frac{1}{2}"], [1, 0, 0, 1, 0], 0.0),  # equal wrong answers written three ways
    (["2", "0.5", "0.25", "2"], [1, 0, 0, 1], 1.0),  # different wrong answers do not vote together
    (["0.5", "1/3", "\\frac{1}{2}", "1/3"], [0, 1, 0, 1], 0.0),  # a tie of groups: the first sample's group wins
])
def test_majority_groups_wrong_answers_by_verifier_equivalence(preds, correct, expected):
    from offline_rl.evaluate import equal_wrong_answers

    correct = [float(c) for c in correct]
    assert majority_correct(preds, correct, equal_wrong_answers([preds], [correct])) == expected


def test_eval_of_a_tiny_model_on_a_tiny_file_benchmark(tmp_path, tiny_model_dir):
    from offline_rl.embedded import world

    problems = world.load_split("test-id")[:6]
    bench = tmp_path / "mini.jsonl"
    bench.write_text("".join(json.dumps({"question": p.question, "answer": p.gold}) + "\n" for p in problems))
    heldout = tmp_path / "heldout.txt"  # two documents of held-out text
    heldout.write_text(f"{problems[0].prompt} {problems[0].solution}\n\n{problems[1].prompt} {problems[1].solution}\n")
    result = run_bin("eval", "--model", str(tiny_model_dir), "--benchmarks", str(bench), "--template", "world",
                     "--k", "3", "--max-tokens", "24", "--backend", "hf", "--out", str(tmp_path / "ev"), "--name",
                     "tiny", "--heldout-text", str(heldout))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "| tiny | mini |" in result.stdout and "| avg@3 |" in result.stdout
    assert "held-out NLL " in result.stdout

    res = json.loads((tmp_path / "ev" / "results.json").read_text())
    metrics = res["benchmarks"]["mini"]
    gens = pq.read_table(tmp_path / "ev" / "generations.parquet").to_pylist()
    assert len(gens) == 6 * 3 and metrics["problems"] == 6
    assert [g["gold"] for g in gens[::3]] == [p.gold for p in problems]
    assert all(g["prompt"] == f"Question: {p.question}\nAnswer:" for g, p in zip(gens[::3], problems, strict=True))
    # every stored reward is the verifier's verdict, and the metrics are functions of them
    assert [g["reward"] for g in gens] == [rewards.score(g["response"], g["gold"]) for g in gens]
    per_problem = [[g["reward"] for g in gens[i : i + 3]] for i in range(0, 18, 3)]
    assert metrics["avg@3"] == pytest.approx(sum(map(sum, per_problem)) / 18)
    assert metrics["pass@3"] == pytest.approx(sum(any(r) for r in per_problem) / 6)
    assert metrics["pass@1"] == pytest.approx(metrics["avg@3"])
    assert metrics["mean_response_tokens"] == pytest.approx(sum(g["response_tokens"] for g in gens) / 18)
    assert metrics["truncation_rate"] == pytest.approx(sum(g["finish_reason"] == "length" for g in gens) / 18)
    assert all(g["response_tokens"] <= 24 for g in gens)
    # what a comparison's paired intervals, forgetting panel and entropy column read
    from offline_rl.evaluate import problem_ids_digest
    from offline_rl.heldout import load_heldout, measure_checkpoint

    assert metrics["correct_per_problem"] == [int(sum(r)) for r in per_problem]
    assert metrics["problem_ids"] == problem_ids_digest([g["prompt_id"] for g in gens[::3]])
    assert 0.5 * math.log(300) < metrics["entropy"] < 1.2 * math.log(300)  # an untrained model: near uniform
    alone = measure_checkpoint(str(tiny_model_dir), load_heldout(str(heldout)))
    assert res["heldout"] == {"text": str(heldout), "documents": 2, **alone}


def test_an_evaluation_is_replaced_only_by_the_same_run_or_with_force(tmp_path, tiny_model_dir, capfd):
    import shutil

    from tests.test_bad_input import assert_one_line, run_alone, snapshot

    for name in ("dft", "sft"):  # two checkpoints as bin/train leaves them (the files that make them ours)
        shutil.copytree(tiny_model_dir, tmp_path / name)
        (tmp_path / name / "train_config.json").write_text(json.dumps({"learner": name}))
        (tmp_path / name / "train_summary.json").write_text(json.dumps({"steps": 1}))
    out = tmp_path / "eval-dft"
    args = ["--benchmarks", "test-id", "--problems", "2", "--k", "2", "--max-tokens", "8", "--backend", "hf",
            "--out", str(out)]
    assert run_alone("eval", ["--model", str(tmp_path / "dft"), *args], capfd)[0] == 0
    record = json.loads((tmp_path / "dft" / "evaluations.json").read_text())[str(out)]
    assert record["path"] == str(out.resolve()) and record["identity"]["model"] == str(tmp_path / "dft")
    assert record["identity"]["k"] == 2 and record["identity"]["problems"] == 2 and "out" not in record["identity"]
    finished = snapshot(tmp_path)  # the evaluation, and the record beside the model
    code, err = run_alone("eval", ["--model", str(tmp_path / "sft"), *args], capfd)
    assert_one_line(code, err, f"{out} holds a finished evaluation of {tmp_path / 'dft'}",
                    f"model ('{tmp_path / 'dft'}', now '{tmp_path / 'sft'}')", "--force")
    assert snapshot(tmp_path) == finished
    code, err = run_alone("eval", ["--model", str(tmp_path / "dft"), *args, "--name", "again"], capfd)  # the same run
    assert code == 0, err
    assert (out / "generations.parquet").read_bytes() == finished["eval-dft/generations.parquet"]
    code, err = run_alone("eval", ["--model", str(tmp_path / "sft"), *args, "--force"], capfd)
    assert code == 0, err
    assert json.loads((out / "results.json").read_text())["model"] == str(tmp_path / "sft")
    assert str(out) not in json.loads((tmp_path / "dft" / "evaluations.json").read_text())  # no longer dft's
    assert json.loads((tmp_path / "sft" / "evaluations.json").read_text())[str(out)]["identity"]["model"] == str(
        tmp_path / "sft")


@pytest.mark.slow
def test_eval_runs_each_shared_benchmark_end_to_end(tmp_path):
    if not SHARED.is_dir():
        pytest.skip(f"benchmark data absent: {SHARED}")
    result = run_bin("eval", "--benchmarks", ",".join(SHARED_BENCHMARKS), "--benchmark-dir", str(SHARED), "--problems", "3",
                     "--k", "2", "--max-tokens", "16", "--backend", "hf", "--out", str(tmp_path / "ev"))
    assert result.returncode == 0, result.stderr[-2000:]
    res = json.loads((tmp_path / "ev" / "results.json").read_text())
    assert list(res["benchmarks"]) == list(SHARED_BENCHMARKS)
    gens = pq.read_table(tmp_path / "ev" / "generations.parquet").to_pylist()
    sources = {"gsm8k": "gsm8k", "math500": "math500", "minerva": "minerva_math", "olympiad": "olympiadbench",
               "aime24": "aime24", "amc23": "amc23"}
    for name, stem in SHARED_BENCHMARKS.items():
        metrics = res["benchmarks"][name]
        assert metrics["problems"] == 3 and metrics["template"] == "qwen-boxed"
        rows = [json.loads(line) for line in (SHARED / f"{stem}.jsonl").read_text().splitlines()[:3]]
        mine = [g for g in gens if g["benchmark"] == name]
        assert len(mine) + 2 * metrics["prompts_too_long"] == 6
        golds = [gold_answer(r, sources[name]) for r in rows]
        assert {g["gold"] for g in mine} <= set(golds) and golds[0]
        assert all("\\boxed{}" in g["prompt"] for g in mine)  # the boxed-answer instruction
        assert all(g["reward"] == rewards.score(g["response"], g["gold"]) for g in mine)




@pytest.mark.parametrize("k", [1, 2, 3, 5])
def test_metrics_at_any_k(k):
    """avg@k, pass@j and maj@k for k other than 4: the keys and the values follow k."""
    from offline_rl.evaluate import benchmark_metrics, pass_ks

    correct = [[1.0] + [0.0] * (k - 1), [0.0] * k]  # one right sample of k, then none
    preds = [["7"] + ["8"] * (k - 1), ["9"] * k]
    metrics = benchmark_metrics(correct, preds, [[3] * k, [3] * k], [[False] * k, [False] * k], k)
    assert metrics[f"avg@{k}"] == pytest.approx(1 / (2 * k))
    assert metrics[f"pass@{k}"] == pytest.approx(0.5) and set(pass_ks(k)) <= {int(key[5:]) for key in metrics if key.startswith("pass@")}
    assert metrics[f"maj@{k}"] == (0.5 if k <= 2 else 0.0)  # the right answer wins a tie, loses to k-1 equal wrong ones
