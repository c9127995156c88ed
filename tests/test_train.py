import json

import pytest
import torch

from offline_rl import views
from offline_rl.embedded import world
from offline_rl.learners import dft, rft, sft
from offline_rl.train import TrainConfig, run_train
from offline_rl.train import main as train_main
from offline_rl.views import Example, ViewContext
from rollout.dataset import DatasetWriter, load_offline_dataset, read_manifest


def world_dataset(path, tokenizer, n_prompts=16):
    """An offline dataset whose 'samples' are the world's reference solutions, half marked accepted."""
    rows = []
    for i, p in enumerate(world.load_split("train")[:n_prompts]):
        prompt_ids = tokenizer(p.prompt)["input_ids"]
        response_ids = tokenizer(" " + p.solution)["input_ids"] + [tokenizer.eos_token_id]
        rows.append({"prompt_id": p.id, "question": p.question, "gold": p.gold, "prompt": p.prompt,
                     "prompt_token_ids": prompt_ids, "response_token_ids": response_ids, "response": p.solution,
                     "behavior_logprobs": [-1.0] * len(response_ids), "sample_idx": 0, "finish_reason": "stop",
                     "pred": p.gold, "reward": float(i % 2 == 0)})
    writer = DatasetWriter(path, {"model": "tiny", "source": {"kind": "world", "split": "train"},
                                  "sampling": {"temperature": 1.0, "top_p": 1.0}})
    writer.write_shard(rows)
    writer.finish()
    return load_offline_dataset(path), read_manifest(path)


def test_views_pick_the_rows_each_learner_trains_on(tmp_path, tiny_model):
    _, tokenizer = tiny_model
    dataset, manifest = world_dataset(tmp_path, tokenizer)
    context = ViewContext(tokenizer, {"data": manifest}, "tiny")
    accepted = {r["prompt_id"] for r in dataset if r["reward"] == 1.0}
    for learner in (rft.LEARNER, dft.LEARNER, sft.LEARNER):  # each one's default view: accepted
        examples = learner.examples(views.view_examples(dataset, learner.views[0]), learner.config(), context)
        assert {e.prompt_id for e in examples} == accepted
    sft_examples = sft.LEARNER.examples(views.view_examples(dataset, "all"), sft.SFTConfig(), context)
    assert len(sft_examples) == 16  # every row, whatever the reward
    solution = world.load_split("train")[0].solution
    assert tokenizer.decode(sft_examples[0].response_token_ids, skip_special_tokens=True).strip() == solution


def test_training_changes_the_model_and_lowers_nll(tmp_path, tiny_model_dir, tiny_model):
    from transformers import AutoModelForCausalLM

    from offline_rl.heldout import load_heldout, measure_checkpoint

    _, tokenizer = tiny_model
    dataset, manifest = world_dataset(tmp_path / "data", tokenizer)
    heldout = tmp_path / "heldout.jsonl"  # held-out text: what the model forgets, every 4 steps
    heldout.write_text("".join(json.dumps({"text": p.prompt + " " + p.solution}) + "\n"
                               for p in world.load_split("test-id")[:3]))
    cfg = TrainConfig(learner="dft", data=str(tmp_path / "data"), out=str(tmp_path / "out"), steps=8,
                      batch_size=4, lr=3e-3, warmup_ratio=0.0, log_every=1, model=str(tiny_model_dir),
                      heldout_every=4, heldout_text=str(heldout))
    summary = run_train(cfg)
    assert summary["steps"] == 8

    before = AutoModelForCausalLM.from_pretrained(tiny_model_dir).state_dict()
    after = AutoModelForCausalLM.from_pretrained(tmp_path / "out").state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    metrics = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 8
    assert metrics[-1]["nll"] < metrics[0]["nll"]
    assert all(0 < m["p"] <= 1 and m["loss"] <= m["nll"] for m in metrics)
    assert 0 < metrics[-1]["lr"] < metrics[0]["lr"]  # cosine decay
    # held out: at steps 1 and 5 the weights their loss was computed with (the initial ones first), the final in the
    # summary; each what the checkpoint alone measures
    assert [m["step"] for m in metrics if "heldout_nll" in m] == [1, 5]
    for measured, model in ((metrics[0], tiny_model_dir), (summary, tmp_path / "out")):
        alone = measure_checkpoint(str(model), load_heldout(str(heldout)))
        assert (measured["heldout_nll"], measured["heldout_entropy"]) == pytest.approx((alone["nll"], alone["entropy"]),
                                                                                      rel=1e-4)
    assert summary["heldout_nll"] < metrics[0]["heldout_nll"]  # trained on the world's text, it fits this text better
    assert (tmp_path / "out" / "heldout.png").read_bytes()[:4] == b"\x89PNG"


def test_ppo_trains_with_its_own_flags_and_logs_ratio_statistics(tmp_path, tiny_model_dir):
    from tests.conftest import make_rows

    writer = DatasetWriter(tmp_path / "data", {"model": str(tiny_model_dir), "source": {"kind": "test"},
                                               "sampling": {"temperature": 1.0, "top_p": 1.0}})
    writer.write_shard(make_rows(n_prompts=4, n=2))
    writer.finish()
    train_main(["--learner", "ppo", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "out"),
                "--steps", "2", "--batch-size", "4", "--clip-eps", "0.1", "--log-every", "1"])
    assert json.loads((tmp_path / "out" / "learner_config.json").read_text())["clip_eps"] == 0.1
    metrics = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert {"ratio", "clip_fraction", "nll"} <= set(metrics[-1])


def test_the_mismatch_is_logged_and_corrected_through_the_loop(tmp_path, tiny_model_dir, tiny_model):
    """make_rows' stored log-probs are made up: a known mismatch with the model named as their sampler. At the first
    step (the policy is that model) metrics.jsonl's k1 is their mean gap to the model's own log-probs, and the
    correction (the model recomputed, frozen, beside the policy) masks the tokens whose ratio leaves [1/2, 2]."""
    from offline_rl.projection import token_logprobs
    from tests.conftest import make_rows

    rows = make_rows(n_prompts=4, n=2)
    writer = DatasetWriter(tmp_path / "data", {"model": str(tiny_model_dir), "source": {"kind": "test"},
                                               "sampling": {"temperature": 1.0, "top_p": 1.0}})
    writer.write_shard(rows)
    writer.finish()
    train_main(["--learner", "ppo", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "out"), "--steps", "1",
                "--batch-size", "8", "--log-every", "1", "--mismatch-correction", "token-mis"])
    record = json.loads((tmp_path / "out" / "metrics.jsonl").read_text().splitlines()[0])
    model, tokenizer = tiny_model
    with torch.no_grad():
        batch = views.collate([Example(r["prompt_id"], r["prompt_token_ids"], r["response_token_ids"],
                                       r["behavior_logprobs"]) for r in rows], tokenizer.eos_token_id)
        sampler = token_logprobs(model, batch, float32=True)  # the model's own log-probs of the stored tokens
    mask, behavior = batch["response_mask"], batch["behavior_logprobs"]
    assert record["mismatch_kl_k1"] == pytest.approx(float(((behavior - sampler) * mask).sum() / mask.sum()), rel=1e-4)
    rho = (sampler - behavior).exp()
    masked = (((rho > 2) | (rho < 0.5)).float() * mask).sum() / mask.sum()
    assert 0 < record["correction_clipped"] == pytest.approx(float(masked))
    assert record["ratio"] == pytest.approx(1.0, abs=1e-5)  # the ratio divides by the recomputed model: 1 at first
    assert 0 < record["mismatch_ess"] <= 1 and {"mismatch_above", "mismatch_below", "mismatch_kl_k3"} <= set(record)


def test_psft_resumes_exactly_from_a_checkpoint_inside_a_snapshots_window(tmp_path, tiny_model_dir, tiny_model):
    """psft's snapshot of steps 1-3 is taken at step 1; a run resumed from its step-2 checkpoint reads it back from the
    checkpoint and ends bitwise as the uninterrupted run; without it, it would take a new one at step 3."""
    import shutil

    from safetensors.torch import load_file

    _, tokenizer = tiny_model
    world_dataset(tmp_path / "data", tokenizer)
    args = ["--learner", "psft", "--data", str(tmp_path / "data"), "--model", str(tiny_model_dir), "--steps", "4",
            "--batch-size", "4", "--lr", "3e-3", "--snapshot-every", "3", "--save-every", "2", "--log-every", "1"]
    train_main([*args, "--out", str(tmp_path / "whole")])
    whole = load_file(tmp_path / "whole" / "model.safetensors")

    def resumed(name: str, keep_snapshot: bool) -> bool:
        out = tmp_path / name  # as if killed after the step-2 checkpoint
        shutil.copytree(tmp_path / "whole", out)
        shutil.rmtree(out / "checkpoints" / "step-4")
        for path in out.iterdir():
            if path.is_file() and path.name not in ("train_config.json", "learner_config.json", "metrics.jsonl"):
                path.unlink()
        if not keep_snapshot:
            (out / "checkpoints" / "step-2" / "snapshots-0.pt").unlink()
        train_main([*args, "--out", str(out), "--resume"])
        other = load_file(out / "model.safetensors")
        return all(torch.equal(whole[k], other[k]) for k in whole)

    assert resumed("resumed", keep_snapshot=True)
    assert not resumed("new-snapshot", keep_snapshot=False)


def test_dpo_trains_with_either_reference(tmp_path, tiny_model_dir):
    from tests.conftest import make_rows

    writer = DatasetWriter(tmp_path / "data", {"model": str(tiny_model_dir), "source": {"kind": "test"},
                                               "sampling": {"temperature": 1.0, "top_p": 1.0}})
    writer.write_shard([{**r, "response_token_ids": [8 + r["sample_idx"], 9, 0]} for r in make_rows(n_prompts=4, n=2)])
    writer.finish()
    for reference in ("model", "behavior"):
        out = tmp_path / f"out-{reference}"
        train_main(["--learner", "dpo", "--data", str(tmp_path / "data"), "--out", str(out), "--steps", "2",
                    "--batch-size", "2", "--beta", "0.2", "--reference", reference, "--log-every", "1",
                    "--model", str(tiny_model_dir)])
        metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        assert {"reward_accuracy", "margin", "nll"} <= set(metrics[-1])


def test_a_second_writer_is_refused_and_a_killed_run_resumes_bitwise_equal(tmp_path, tiny_model_dir, tiny_model):
    from safetensors.torch import load_file

    from tests.conftest import run_bin
    from tests.test_cli import assert_one_line_usage_error
    from tests.test_collect import kill, start_paused

    _, tokenizer = tiny_model
    world_dataset(tmp_path / "data", tokenizer, n_prompts=32)
    args = ["--learner", "dft", "--data", str(tmp_path / "data"), "--model", str(tiny_model_dir), "--steps", "6",
            "--batch-size", "8", "--micro-batch-size", "4", "--lr", "3e-3", "--save-every", "2", "--log-every", "1"]
    train_main([*args, "--out", str(tmp_path / "whole")])  # in this process: the same run as bin/train's
    whole = load_file(tmp_path / "whole" / "model.safetensors")

    def weights_equal(out) -> bool:
        other = load_file(out / "model.safetensors")
        return other.keys() == whole.keys() and all(torch.equal(whole[k], other[k]) for k in whole)  # bitwise

    # a second bin/train into the directory of a running one is refused; the first ends as if alone
    first = start_paused("train", [*args, "--out", str(tmp_path / "first")], "train:step-1", tmp_path / "flag-1")
    second = run_bin("train", *args, "--out", str(tmp_path / "first"))
    assert_one_line_usage_error(second, f"pid {first.pid}")
    (tmp_path / "flag-1").unlink()
    assert first.wait(timeout=120) == 0
    assert weights_equal(tmp_path / "first")

    # killed after step 3 (checkpoint at 2, steps 1-3 logged), resumed: the same weights, each step logged once
    killed = tmp_path / "killed"
    kill(start_paused("train", [*args, "--out", str(killed)], "train:step-3", tmp_path / "flag-3"))
    assert not (killed / "model.safetensors").exists() and (killed / "checkpoints" / "step-2").is_dir()
    result = run_bin("train", *args, "--out", str(killed), "--resume")
    assert result.returncode == 0, result.stderr[-2000:]
    assert weights_equal(killed)
    steps = [json.loads(line)["step"] for line in (killed / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]


def test_resume_without_checkpoint_is_bad_input(tmp_path, tiny_model_dir, tiny_model):
    from rollout.runtime import UsageError

    _, tokenizer = tiny_model
    world_dataset(tmp_path / "data", tokenizer)
    with pytest.raises(UsageError, match="no checkpoint"):  # one line, exit 2 (bin/train's handling: test_cli)
        train_main(["--data", str(tmp_path / "data"), "--model", str(tiny_model_dir), "--out", str(tmp_path / "o"),
                    "--resume"])


def test_nan_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path, tiny_model_dir, tiny_model,
                                                                          monkeypatch):
    from safetensors.torch import load_file

    from offline_rl import train
    from rollout.runtime import CommandFailed

    _, tokenizer = tiny_model
    world_dataset(tmp_path / "data", tokenizer)
    # a schedule that multiplies the rate by 1e30 (--lr itself is bounded by 1) blows the weights up on the first
    # update: step 2's loss is NaN
    monkeypatch.setattr(train, "lr_lambda", lambda total, warmup: lambda step: 1e30)
    with pytest.raises(CommandFailed) as failed:  # an internal failure (exit 1), not bad input
        train.main(["--data", str(tmp_path / "data"), "--model", str(tiny_model_dir), "--out", str(tmp_path / "o"),
                    "--steps", "6", "--batch-size", "4", "--lr", "1", "--warmup-ratio", "0", "--save-every", "1",
                    "--log-every", "1"])
    assert str(failed.value) == ("loss became nan at step 2; stopped, last good checkpoint: "
                                 f"{tmp_path / 'o' / 'checkpoints' / 'step-1'}")
    assert [p.name for p in (tmp_path / "o" / "checkpoints").iterdir()] == ["step-1"]
    assert all(torch.isfinite(t).all() for t in load_file(tmp_path / "o" / "checkpoints" / "step-1" / "model.safetensors").values())
    assert not (tmp_path / "o" / "model.safetensors").exists()  # no final model from a failed run
    metrics = [json.loads(line) for line in (tmp_path / "o" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2] and metrics[1]["loss"] != metrics[1]["loss"]  # NaN recorded


def test_the_saved_configuration_is_resolved_and_repeats_the_run(tmp_path, tiny_model_dir, tiny_model, capfd):
    import yaml
    from safetensors.torch import load_file

    from tests.conftest import REPR
    from tests.test_bad_input import run_command

    _, tokenizer = tiny_model
    world_dataset(tmp_path / "data", tokenizer)
    code, err = run_command("train", ["--learner", "adft", "--data", str(tmp_path / "data"), "--model",
                                      str(tiny_model_dir), "--out", str(tmp_path / "a"), "--epochs", "2",
                                      "--batch-size", "4", "--anchor-coef", "0.2", "--approximate-ratios"], capfd)
    assert code == 0, err
    saved = json.loads((tmp_path / "a" / "train_config.json").read_text())
    # derived values resolved: the model, the total and warm-up steps; the learner's own settings beside them
    assert saved["model"] == str(tiny_model_dir) and saved["steps"] == 4 and saved["warmup_steps"] == 1
    assert saved["anchor_coef"] == 0.2 and saved["learner"] == "adft"
    saved_yaml = yaml.safe_load((tmp_path / "a" / "config.yaml").read_text())
    assert saved_yaml == {k: v for k, v in saved.items() if k != "force"}
    assert f"config -> {tmp_path / 'a' / 'config.yaml'}" in err.splitlines()
    assert not [line for line in err.splitlines() if REPR.match(line)]
    code, err = run_command("train", ["--config", str(tmp_path / "a" / "train_config.json"), "--out",
                                      str(tmp_path / "b")], capfd)
    assert code == 0, err
    a, b = load_file(tmp_path / "a" / "model.safetensors"), load_file(tmp_path / "b" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)



def test_a_finished_model_is_replaced_only_by_the_same_run_or_with_force(tmp_path, tiny_model_dir, tiny_model, capfd):
    from tests.test_bad_input import assert_one_line, run_alone, snapshot

    _, tokenizer = tiny_model
    world_dataset(tmp_path / "data", tokenizer, n_prompts=8)
    out = tmp_path / "dft"
    args = ["--data", str(tmp_path / "data"), "--model", str(tiny_model_dir), "--out", str(out), "--steps", "2",
            "--batch-size", "2"]
    evaluated = '{"eval-dft": {"k": 4}}\n'  # what bin/eval recorded of these weights
    assert run_alone("train", [*args, "--learner", "dft"], capfd)[0] == 0
    (out / "evaluations.json").write_text(evaluated)
    finished = snapshot(out)
    code, err = run_alone("train", [*args, "--learner", "asft"], capfd)
    assert_one_line(code, err, f"{out} holds a finished dft model trained on", "learner ('dft', now 'asft')", "--force")
    assert snapshot(out) == finished
    code, err = run_alone("train", [*args, "--learner", "dft", "--log-every", "1"], capfd)  # the same run, again
    assert code == 0, err
    assert (out / "model.safetensors").read_bytes() == finished["model.safetensors"]
    assert not (out / "evaluations.json").exists()  # trained again: no record of earlier weights passes for these
    (out / "evaluations.json").write_text(evaluated)
    code, err = run_alone("train", [*args, "--learner", "sft", "--force"], capfd)
    assert code == 0, err
    assert json.loads((out / "train_config.json").read_text())["learner"] == "sft"
    assert (out / "model.safetensors").read_bytes() != finished["model.safetensors"]
    assert not (out / "evaluations.json").exists() and "None recorded" in (out / "README.md").read_text()


def test_whole_batches_go_once_through_every_example_in_the_steps():
    from offline_rl.train import resolve, step_batches
    from rollout.runtime import UsageError

    cfg, _, _ = resolve(TrainConfig(steps=3, whole_batches=True, batch_size=999), 37, 1, "m")
    assert (cfg.batch_size, cfg.micro_batch_size) == (12, 12)  # 36 of 37 seen once, 1 left over
    (first,), (second,), (third,) = [next(b) for b in [step_batches(37, cfg, 0, 1, 1)] for _ in range(3)]
    assert len(set(first + second + third)) == 36
    ddp, _, _ = resolve(TrainConfig(steps=2, whole_batches=True), 25, 2, "m")
    assert (ddp.batch_size, ddp.micro_batch_size) == (12, 6)  # a multiple of the processes
    micro, _, _ = resolve(TrainConfig(steps=3, whole_batches=True, micro_batch_size=5), 37, 1, "m")
    assert (micro.batch_size, micro.micro_batch_size) == (10, 5)  # whole micro-batches (not 12, refused before)
    with pytest.raises(UsageError, match="needs --steps"):
        resolve(TrainConfig(whole_batches=True), 25, 1, "m")


def test_length_groups_cut_a_step_into_micro_batches_of_bounded_padding():
    from offline_rl.learners.dpo import Pair
    from offline_rl.train import example_size, length_groups

    sizes = [(1, 10), (1, 40), (1, 12), (1, 38), (1, 10), (2, 30)]
    groups = length_groups(sizes, max_tokens=80)
    assert groups == [[1, 3], [5], [2, 0, 4]]  # longest first; rows x longest <= 80; equal lengths in order
    assert sorted(i for g in groups for i in g) == list(range(len(sizes)))
    assert length_groups([(1, 100), (1, 5)], max_tokens=50) == [[0], [1]]  # too long alone: a group of its own
    short, long = Example("p", [1, 2], [3]), Example("p", [1, 2], [3, 4, 5, 6])
    assert example_size(long) == (1, 6) and example_size(Pair(short, long)) == (2, 6)


@pytest.mark.parametrize("learner", ["dft", "sft"])
def test_micro_batches_regrouped_by_length_train_the_same_steps(learner, tmp_path, tiny_model_dir, tiny_model):
    """The step's examples regrouped into short and long micro-batches: the same losses and weights up to float
    rounding as the step at once, with fewer padded tokens."""
    from safetensors.torch import load_file

    from offline_rl import train

    _, tokenizer = tiny_model
    world_dataset(tmp_path / "data", tokenizer)
    runs = {}
    for tokens in ("0", "120"):
        out = tmp_path / f"{learner}-{tokens}"
        train.main(["--learner", learner, "--data", str(tmp_path / "data"), "--model", str(tiny_model_dir), "--out",
                    str(out), "--steps", "3", "--batch-size", "8", "--lr", "3e-3", "--view", "all",
                    "--micro-batch-tokens", tokens, "--report-to", "none"])
        runs[tokens] = (load_file(out / "model.safetensors"),
                        [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()])
    assert runs["0"][1] == pytest.approx(runs["120"][1], rel=1e-5)
    diffs = [(value - runs["120"][0][name]).abs().max().item() for name, value in runs["0"][0].items()]
    assert max(diffs) < 1e-4 and sorted(diffs)[len(diffs) // 2] < 1e-6
