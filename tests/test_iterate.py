"""bin/iterate: rounds carry the policy, the optimizer and the schedule; a killed run resumes to the same end;
online GRPO samples from the current policy (every ratio 1 when a round's first step begins)."""

import json
import math
from pathlib import Path

import pytest
import torch
import yaml

from offline_rl.train import TrainConfig, lr_lambda
from rollout.dataset import read_manifest, read_rows
from tests.conftest import REPR, run_bin
from tests.test_collect import kill, start_paused

ROUNDS = ["--rounds", "2", "--steps", "6", "--prompts-per-round", "12", "--batch-size", "8",
          "--lr", "1e-3", "--seed", "0"]


@pytest.fixture(scope="module")
def rft_rounds(tmp_path_factory):
    """2 rounds x 3 steps of rft on the shipped base model, uninterrupted."""
    out = tmp_path_factory.mktemp("iterate") / "whole"
    result = run_bin("iterate", "--learner", "rft", *ROUNDS, "--out", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    return out


def weights(path):
    from safetensors.torch import load_file

    return load_file(path / "model.safetensors")


def test_round_two_samples_with_round_one_and_carries_the_optimizer_and_schedule(rft_rounds):
    out = rft_rounds
    # round 2's dataset is an ordinary offline dataset sampled by round 1's checkpoint
    assert read_manifest(out / "round-2" / "data")["model"] == str(out / "round-1" / "train")
    assert read_manifest(out / "round-1" / "data")["model"].endswith("base-model")
    collected = json.loads((out / "round-2" / "data" / "collect_config.json").read_text())
    assert collected["model"] == str(out / "round-1" / "train") and collected["skip"] == 12  # the next window
    # the optimizer's moments carry over: AdamW has counted all 6 steps, not round 2's 3
    state = torch.load(out / "round-2" / "train" / "checkpoints" / "step-6" / "optimizer.bin", weights_only=False)
    assert {int(s["step"]) for s in state["state"].values()} == {6}
    assert not (out / "round-1" / "train" / "checkpoints").exists()  # only the latest state is kept
    # one schedule over the 6 steps: round 2's first step uses the rate at position 3 of it, not a restart's
    steps = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [s["step"] for s in steps] == [1, 2, 3, 4, 5, 6] and [s["round"] for s in steps] == [1, 1, 1, 2, 2, 2]
    schedule = lr_lambda(6, 1)
    for s in steps:
        assert math.isclose(s["lr"], 1e-3 * schedule(s["step"] - 1), rel_tol=1e-6), s
    assert not math.isclose(steps[3]["lr"], 1e-3 * lr_lambda(3, 1)(0))
    # OUT loads as the final model: round 2's weights
    final = weights(out)
    assert final.keys() == weights(out / "round-2" / "train").keys()
    assert all(torch.equal(final[k], weights(out / "round-2" / "train")[k]) for k in final)
    summary = json.loads((out / "iterate_summary.json").read_text())
    assert summary["responses"] == 2 * 12 * 4 and summary["steps"] == 6 and summary["sampled_tokens"] > 0
    assert summary["engine_ms_per_round"] < 2000  # weights loaded in place, not a new engine (seconds)
    assert summary["engine_start_ms"] > summary["engine_ms_per_round"]  # the first start apart
    rounds = [json.loads(line) for line in (out / "rounds.jsonl").read_text().splitlines()]
    assert [r["engine"] for r in rounds] == ["started", "loaded in place"]


@pytest.mark.slow
def test_killed_in_round_two_and_rerun_ends_equal_to_an_uninterrupted_run(rft_rounds, tmp_path, capfd):
    whole = rft_rounds
    out = tmp_path / "killed"
    args = ["--learner", "rft", *ROUNDS, "--out", str(out)]
    # killed as round 2 begins to collect: the rerun samples round 2 with a new engine started on round 1's
    # checkpoint, where the uninterrupted run loaded those weights into its live engine, then trains round 2
    # from round 1's saved optimizer state (a kill inside a round's training restarts that training the same way:
    # bin/train's own kill/resume test covers the step level)
    kill(start_paused("iterate", args, "iterate:round-2:collect", tmp_path / "flag-1"))
    assert (out / "round-1" / "round.json").exists() and not (out / "round-2" / "data" / "manifest.json").exists()
    result = run_bin("iterate", *args)
    assert result.returncode == 0, result.stderr[-3000:]

    def rows(path):
        return sorted((r["prompt_id"], r["sample_idx"], r["response_token_ids"], r["reward"])
                      for r in read_rows(path / "round-2" / "data"))

    assert rows(out) == rows(whole)
    for a, b in [(read_rows(out / "round-2" / "data"), read_rows(whole / "round-2" / "data"))]:
        key = lambda r: (r["prompt_id"], r["sample_idx"])  # noqa: E731
        for x, y in zip(sorted(a, key=key), sorted(b, key=key), strict=True):
            assert max(abs(u - v) for u, v in zip(x["behavior_logprobs"], y["behavior_logprobs"], strict=True)) < 1e-5
    ours, theirs = weights(out), weights(whole)
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)  # bitwise
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]
    # a finished run, run again (in this process: it starts no engine), does nothing more
    from tests.test_bad_input import run_alone

    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    code, err = run_alone("iterate", args, capfd)
    assert code == 0, err[-2000:]
    after = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert {p.name for p in after if after[p] != before.get(p)} == {".offline-rl.lock", "iterate_summary.json"}
    summaries = [json.loads(files[out / "iterate_summary.json"]) for files in (before, after)]
    assert summaries[1]["wall_seconds_this_run"] == 0  # nothing trained or sampled; the rest of the summary kept
    assert {**summaries[1], "wall_seconds_this_run": None} == {**summaries[0], "wall_seconds_this_run": None}


def test_online_grpo_under_lora_is_on_policy_at_the_first_step_of_every_round(tmp_path):
    """GRPO's recipe (--round-batches): a round's 2 steps go once through all the samples of its 5 groups of 4 that
    it trains on (groups whose rewards are all equal carry no advantage and are left out). Under LoRA (--lora-rank
    like any bin/train flag): each round trains a fresh adapter on the policy the last round merged, so round 2's
    samples, drawn from round 1's merged checkpoint, are on-policy at its first step only if the merge is exact;
    --eval-every evaluates the merged model."""
    out = tmp_path / "grpo"
    # the transformers engine (its sampled log-probs are exact too): no vLLM start-up in this test
    result = run_bin("iterate", "--learner", "grpo", "--rounds", "2", "--steps", "4", "--prompts-per-round",
                     "5", "--n", "4", "--round-batches", "--lr", "1e-3", "--lora-rank", "8", "--eval-every", "2",
                     "--benchmarks", "test-id", "--problems", "1", "--k", "1", "--backend", "hf", "--out", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    first, second = out / "round-1" / "train", out / "round-2" / "train"
    config = json.loads((second / "train_config.json").read_text())
    assert (config["lora_rank"], config["model"]) == (8, str(first))
    assert config["init_from"] == str(first / "checkpoints" / "step-2")  # the schedule goes on (lr checked below)
    assert read_manifest(out / "round-2" / "data")["model"] == str(first)  # sampled by round 1's merged model
    adapter = json.loads((second / "adapter" / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == str(first)  # round 2's adapter sits on round 1's merged weights
    assert json.loads((out / "round-2" / "round.json").read_text())["eval_avg"] is not None  # the merged model
    assert all(torch.equal(a, weights(second)[k]) for k, a in weights(out).items())
    for k in (1, 2):
        trained = json.loads((out / f"round-{k}" / "train" / "train_config.json").read_text())
        record = json.loads((out / f"round-{k}" / "round.json").read_text())
        assert (record["responses"], trained["batch_size"], trained["steps"]) == (20, record["examples"] // 2, 2)
        assert record["examples"] >= 4 and trained["whole_batches"]
    steps = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    firsts = [s for s in steps if s["step"] in (1, 3)]
    seconds = [s for s in steps if s["step"] in (2, 4)]
    assert len(firsts) == 2 and all("clip_fraction" in s and "ratio" in s for s in steps)
    for s in firsts:  # sampled by the weights being trained: every token's ratio is 1
        assert s["abs_log_ratio_max"] < 1e-4 and abs(s["ratio"] - 1) < 1e-4, s
    # after one update the same samples are off-policy: the check above can fail
    assert all(s["abs_log_ratio_max"] > 1e-3 for s in seconds), seconds
    schedule = lr_lambda(4, 1)  # one schedule over both rounds
    assert all(math.isclose(s["lr"], 1e-3 * schedule(s["step"] - 1), rel_tol=1e-6) for s in steps)


def test_like_samples_as_the_dataset_did_and_shares_its_prompts_over_the_rounds(vllm_dataset, tmp_path):
    from offline_rl.experiments.iterate import IterateConfig, sample_like
    from rollout.runtime import with_flags

    cfg = sample_like(IterateConfig(sample_like=str(vllm_dataset), rounds=4, out=str(tmp_path)), given={"rounds"})
    manifest = read_manifest(vllm_dataset)
    assert (cfg.prompts_per_round, cfg.collect.n, cfg.collect.max_tokens) == (24 // 4, 2, 96)
    assert cfg.collect.model == manifest["model"] and cfg.collect.source == "world:train"
    # the evaluations sample as the rounds do
    assert (cfg.evaluation.max_tokens, cfg.evaluation.temperature) == (96, 1.0)
    given = sample_like(with_flags(IterateConfig(sample_like=str(vllm_dataset), rounds=2), {"n": 4}),
                        given={"rounds", "n"})
    # a group size given wins; the prompts per round keep the dataset's responses: 24 x 2 = 2 rounds x 6 x 4
    assert (given.collect.n, given.prompts_per_round) == (4, 6)


def test_a_round_with_nothing_to_train_on_is_recorded_and_the_run_goes_on(tmp_path):
    """Golds no sample can match: rft has no accepted sample in any round; each round is recorded as skipped, the
    next samples from the same policy, and the run ends with the policy it started from."""
    source = tmp_path / "impossible.jsonl"
    source.write_text("".join(json.dumps({"question": f"What is {i} + {i}?", "answer": "no-such-answer"}) + "\n"
                              for i in range(8)))
    out = tmp_path / "rounds"
    result = run_bin("iterate", "--learner", "rft", "--source", str(source), "--rounds", "2", "--steps", "2",
                     "--prompts-per-round", "4", "--n", "1", "--max-tokens", "8", "--backend", "hf", "--out", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    rounds = [json.loads(line) for line in (out / "rounds.jsonl").read_text().splitlines()]
    assert [("skipped" in r, r["policy"]) for r in rounds] == [(True, rounds[0]["policy"])] * 2
    # its settings and bin/train's it leaves as given, in one file that --config takes; named, not printed whole
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert (saved["learner"], saved["rounds"], saved["lr"]) == ("rft", 2, TrainConfig().lr)
    assert f"config -> {out / 'config.yaml'}" in result.stderr.splitlines()
    assert not [line for line in result.stderr.splitlines() if REPR.match(line)]
    assert "no training examples for rft" in rounds[0]["skipped"]
    summary = json.loads((out / "iterate_summary.json").read_text())
    assert summary["skipped_rounds"] == [1, 2] and summary["steps"] == 0
    assert (out / "model.safetensors").read_bytes() == (Path(rounds[0]["policy"]) / "model.safetensors").read_bytes()


def test_engine_times_keep_the_first_start_apart_from_each_rounds_new_weights():
    from offline_rl.experiments.iterate import engine_line, engine_times

    start, load, held = ({"engine": "started", "engine_ms": 6500.0}, {"engine": "loaded in place", "engine_ms": 20.0},
                         {"engine": None, "engine_ms": None})
    assert engine_times([start, load, held, {**load, "engine_ms": 40.0}], restart=False) == {
        "engine_start_ms": 6500.0, "engine_ms_per_round": 30.0}
    # a resumed run's new engine counts in neither; --restart-engine: every later start is a round's cost
    assert engine_times([start, load, {**start, "engine_ms": 5000.0}, load], restart=False)["engine_ms_per_round"] == 20
    assert engine_times([start, {**start, "engine_ms": 5000.0}], restart=True)["engine_ms_per_round"] == 5000
    # bin/compare's engine, running already; rounds recorded before the record said which hold was which
    assert engine_times([load, load], restart=False) == {"engine_start_ms": None, "engine_ms_per_round": 20.0}
    assert engine_times([{"engine_ms": 6500.0}, {"engine_ms": 20.0}], restart=False) == {
        "engine_start_ms": 6500.0, "engine_ms_per_round": 20.0}
    nothing = engine_line({**engine_times([start, held], restart=False), "engine": "live"})
    assert nothing == "engine started in 6.5 s, no new weights after it (live)" and "None" not in nothing


def test_an_out_recorded_before_sample_like_resumes_and_a_changed_setting_is_refused(tmp_path):
    """iterate_config.json as bin/iterate wrote it before --data was renamed --sample-like and before it took
    bin/collect's and bin/eval's other flags: the same run resumes; another group size is refused."""
    from offline_rl.experiments.iterate import RESUMABLE, IterateConfig, settings
    from rollout.runtime import UsageError, check_rerun_settings, with_flags

    cfg = with_flags(IterateConfig(out=str(tmp_path), steps=100, sample_like="runs/data"), {"n": 8})
    old = {("data" if k == "sample_like" else k): v for k, v in settings(cfg).items()
           if k not in ("question_field", "answer_field", "hub_split", "strict", "scoring_deadline", "shard_size",
                        "benchmark_dir")}
    (tmp_path / "iterate_config.json").write_text(json.dumps(old))

    def check(new):
        check_rerun_settings(tmp_path / "iterate_config.json", {k: v for k, v in settings(new).items()
                                                                 if k not in RESUMABLE}, tmp_path, False,
                             defaults=settings(IterateConfig()), renamed={"data": "sample_like"})

    check(cfg)
    with pytest.raises(UsageError, match="different n"):
        check(with_flags(cfg, {"n": 4}))
    with pytest.raises(UsageError, match="different scoring_deadline"):
        check(with_flags(cfg, {"scoring_deadline": 1.0}))


def test_asft_is_anchored_to_the_runs_initial_model_in_every_round(tmp_path):
    """Round 2 starts from round 1's policy, but asft's KL is to the run's initial model: above 0 at round 2's first
    step (anchored to its own start it would be 0 there, as it is at round 1's)."""
    out = tmp_path / "asft"
    result = run_bin("iterate", "--learner", "asft", "--view", "all", "--rounds", "2", "--steps", "2",
                     "--prompts-per-round", "2", "--n", "1", "--max-tokens", "24", "--lr", "1e-3", "--kl-coef", "0.5",
                     "--backend", "hf", "--out", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    firsts = {}
    for k in (1, 2):
        train = out / f"round-{k}" / "train"
        initial = json.loads((out / "rounds.jsonl").read_text().splitlines()[0])["policy"]
        assert json.loads((train / "train_config.json").read_text())["base_model"] == initial
        firsts[k] = json.loads((train / "metrics.jsonl").read_text().splitlines()[0])["kl"]
    assert firsts[1] == pytest.approx(0.0, abs=1e-6) and firsts[2] > 1e-5, firsts


def test_chord_rounds_mix_in_their_expert_rows_and_count_their_tokens_apart(tmp_path, capsys):
    """CHORD in bin/iterate (one round of 4 groups of 4): the round's GRPO samples with expert rows mixed in (a fifth
    of its examples), mu as set, the expert tokens counted apart from the sampled ones in its steps, its round and
    the summary."""
    from offline_rl.embedded import context
    from offline_rl.experiments import iterate
    from rollout import demonstrations

    experts = tmp_path / "experts"
    demonstrations.main(["--source", "world:train", "--out", str(experts), "--prompts", "12"], context=context())
    out = tmp_path / "chord"
    summary = iterate.main(["--learner", "chord", "--expert-data", str(experts), "--mu-peak", "0.5", "--mu-valley",
                            "0.5", "--rounds", "1", "--steps", "1", "--prompts-per-round", "4", "--n", "4",
                            "--round-batches", "--lr", "1e-3", "--backend", "hf", "--out", str(out)])
    rounds = [json.loads(line) for line in (out / "rounds.jsonl").read_text().splitlines()]
    trained = [r for r in rounds if "skipped" not in r]
    assert trained and all(r["expert_tokens"] > 0 for r in trained)
    assert summary["expert_tokens"] == sum(r["expert_tokens"] for r in rounds) > 0
    assert f"and {summary['expert_tokens']} expert tokens trained on" in capsys.readouterr().out
    steps = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(s["mu_max"] == 0.5 and s["expert_tokens"] > 0 and "expert_nll" in s and "mismatch_kl_k1" in s
               for s in steps)
    assert all(s["tokens"] > s["expert_tokens"] for s in steps)  # the sampled tokens besides
