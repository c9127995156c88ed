"""The precision switch: accelerate's mixed_precision and --precision resolved into one setting (a contradiction
refused: test_bad_input.py); fp16's loss scale skips an overflow and grows back; on CPU, bf16 and fp16 runs train,
log their first step's log-prob gap to float32, and fp16's gradients are unscaled (the same norms as float32)."""

import json

import pytest
import torch

from offline_rl import precision
from offline_rl.train import main as train_main
from rollout.runtime import UsageError
from tests.test_train import world_dataset


def test_the_precision_is_the_flag_or_accelerates_or_the_devices(monkeypatch):
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    assert precision.resolve(None, on_accelerator=False) == "fp32"
    assert precision.resolve(None, on_accelerator=True) == "bf16"
    assert precision.resolve("fp16", on_accelerator=False) == "fp16"
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")  # as accelerate launch exports its config's
    assert precision.resolve(None, on_accelerator=False) == "bf16"
    assert precision.resolve("bf16", on_accelerator=False) == "bf16"
    with pytest.raises(UsageError, match="--precision fp32 contradicts accelerate's mixed_precision bf16"):
        precision.resolve("fp32", on_accelerator=False)
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "fp8")
    with pytest.raises(UsageError, match="mixed_precision fp8 is not a bin/train precision"):
        precision.resolve(None, on_accelerator=True)


def test_the_loss_scale_skips_an_overflow_and_grows_back():
    scale = precision.LossScale(enabled=True)
    param = torch.nn.Parameter(torch.zeros(3))
    param.grad = torch.tensor([65536.0, -131072.0, 0.0])
    scale.unscale([param])
    assert torch.equal(param.grad, torch.tensor([1.0, -2.0, 0.0]))
    assert scale.update(float("inf")) is False and scale.scale == 2.0**15  # overflow: halved, the step skipped
    for _ in range(precision.LossScale.GROWTH_INTERVAL - 1):
        assert scale.update(1.0)
    assert scale.scale == 2.0**15
    assert scale.update(1.0) and scale.scale == 2.0**16  # 2,000 clean steps: doubled
    restored = precision.LossScale(enabled=True)
    restored.load_state_dict(scale.state_dict())
    assert restored.state_dict() == scale.state_dict()
    off = precision.LossScale(enabled=False)
    assert off.scale == 1.0 and off.update(float("nan"))  # fp32, bf16: never a skip (the loop's check stops the run)


def test_bf16_and_fp16_train_on_cpu_and_log_their_gap_to_float32(tmp_path, tiny_model_dir, tiny_model):
    _, tokenizer = tiny_model
    world_dataset(tmp_path / "data", tokenizer, n_prompts=8)
    records = {}
    for mode in ("fp32", "bf16", "fp16"):
        out = tmp_path / mode
        train_main(["--learner", "dft", "--data", str(tmp_path / "data"), "--model", str(tiny_model_dir), "--out",
                    str(out), "--steps", "2", "--batch-size", "4", "--lr", "3e-3", "--precision", mode,
                    "--lora-rank", "4", "--log-every", "2", "--report-to", "none"])
        records[mode] = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        assert json.loads((out / "train_config.json").read_text())["precision"] == mode
        assert f"Precision {mode}" in (out / "README.md").read_text()
    assert [r["step"] for r in records["fp32"]] == [2] and "logprob_gap_fp32" not in records["fp32"][0]
    for mode in ("bf16", "fp16"):
        first = records[mode][0]
        assert [r["step"] for r in records[mode]] == [1, 2]  # the first step logged for its gap
        assert 0 < first["logprob_gap_fp32"] <= first["logprob_gap_fp32_max"] < 0.5, first
        # the same step as float32 to the precision's rounding; fp16's gradients unscaled before their norm
        assert records[mode][1]["loss"] == pytest.approx(records["fp32"][0]["loss"], rel=0.05)
        assert records[mode][1]["grad_norm"] == pytest.approx(records["fp32"][0]["grad_norm"], rel=0.1)
    assert records["bf16"][0]["logprob_gap_fp32"] > records["fp16"][0]["logprob_gap_fp32"]  # 8 bits of mantissa, not 11
    assert records["fp16"][0]["loss_scale"] == 2.0**16 and records["fp16"][1]["skipped"] == 0
