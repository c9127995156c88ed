"""LoRA through PEFT: a run writes its adapter and the merged model, resumes exactly, checkpoints only what it
trains; the frozen reference is the training model with its adapter off, equal to the two-model path (ASFT's
anchor, DPO's reference pass); the merge equals PEFT's own. (Directions under LoRA: test_directions.py; FSDP2:
test_fsdp.py; rounds: test_iterate.py; bad input: test_bad_input.py.)"""

import copy
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from offline_rl import lora
from offline_rl.embedded import world
from offline_rl.policies import initial_model
from offline_rl.projection import token_logprobs_and_kl
from offline_rl.train import TrainConfig
from offline_rl.train import main as train_main
from offline_rl.views import Example, Pair, ViewContext, collate, reference_from_model
from tests.test_train import world_dataset

SETTINGS = TrainConfig(lora_rank=4, lora_alpha=8.0, lora_train_embeddings=True)


def _adapted(model, settings=SETTINGS, seed=0):
    """A LoRA copy of ``model`` whose adapters (and trained embeddings) are moved away from their start, so that
    the policy differs from its frozen base."""
    adapted = lora.attach(copy.deepcopy(model), settings)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in adapted.parameters():
            if param.requires_grad:
                param.add_(0.05 * torch.randn(param.shape, generator=generator))
    return adapted


def _examples(tokenizer, n=4):
    return [Example(p.id, tokenizer(p.prompt)["input_ids"], tokenizer(" " + p.solution)["input_ids"] + [0])
            for p in world.load_split("train")[:n]]


def test_a_lora_run_saves_its_adapter_and_merged_model_and_resumes_exactly(tmp_path, tiny_model_dir, tiny_model):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    _, tokenizer = tiny_model
    world_dataset(tmp_path / "data", tokenizer, n_prompts=16)
    args = ["--learner", "dft", "--data", str(tmp_path / "data"), "--model", str(tiny_model_dir), "--steps", "4",
            "--batch-size", "4", "--lr", "3e-3", "--lora-rank", "4", "--save-every", "2", "--log-every", "1",
            "--report-to", "none"]
    whole = tmp_path / "whole"
    train_main([*args, "--out", str(whole)])
    # the adapter in PEFT's format, and the merged weights as an ordinary checkpoint that computes the same policy
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    policy = PeftModel.from_pretrained(copy.deepcopy(base), whole / "adapter").eval()
    merged = AutoModelForCausalLM.from_pretrained(whole).eval()
    batch = collate(_examples(tokenizer), 0)
    with torch.no_grad():
        logits = policy(input_ids=batch["input_ids"]).logits
        assert torch.allclose(merged(input_ids=batch["input_ids"]).logits, logits, atol=1e-5)
        assert (base(input_ids=batch["input_ids"]).logits - logits).abs().max() > 1e-3  # it trained
    config = json.loads((whole / "train_config.json").read_text())
    assert config["lora_rank"] == 4 and config["lora_alpha"] == 8.0 and config["precision"] == "fp32"
    assert "LoRA rank 4" in (whole / "README.md").read_text()
    # a checkpoint holds what is trained: the adapters, nothing of the frozen weights
    saved = load_file(whole / "checkpoints" / "step-2" / "model.safetensors")
    assert saved and all(".lora_A." in k or ".lora_B." in k for k in saved)

    # resumed from step 2 in another OUT: bitwise the uninterrupted run's adapter and merged weights
    resumed = tmp_path / "resumed"
    shutil.copytree(whole / "checkpoints" / "step-2", resumed / "checkpoints" / "step-2")
    shutil.copy(whole / "train_config.json", resumed / "train_config.json")
    train_main([*args, "--out", str(resumed), "--resume"])
    for name in ("model.safetensors", "adapter/adapter_model.safetensors"):
        one, two = load_file(whole / name), load_file(resumed / name)
        assert one.keys() == two.keys() and all(torch.equal(one[k], two[k]) for k in one), name


def test_the_adapter_off_reference_equals_a_second_frozen_model(tiny_model_dir, tiny_model):
    """ASFT's anchor and DPO's reference pass from the training model with its adapter off (the trained embeddings
    and head included) equal the two-model path: values and gradients."""
    model, tokenizer = tiny_model
    adapted = _adapted(model)
    batch = collate(_examples(tokenizer), 0)
    trained = [p for p in adapted.parameters() if p.requires_grad]
    results = []
    for reference in (lora.AdapterOff(adapted), model):
        logprobs, kl = token_logprobs_and_kl(adapted, reference, batch, chunk_size=7)
        grads = torch.autograd.grad((logprobs + kl).sum(), trained)
        results.append((logprobs.detach(), kl.detach(), grads))
    (lp1, kl1, g1), (lp2, kl2, g2) = results
    assert kl2.sum() > 1e-3  # the policy is not its base: the check can fail
    assert torch.allclose(lp1, lp2, atol=1e-6) and torch.allclose(kl1, kl2, atol=1e-6)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(g1, g2, strict=True))

    examples = _examples(tokenizer)
    pairs = [Pair(examples[0], examples[1]), Pair(examples[2], examples[3])]
    apart = reference_from_model(pairs, ViewContext(tokenizer, {}, str(tiny_model_dir), logit_chunk_size=7))
    same = reference_from_model(pairs, ViewContext(tokenizer, {}, str(tiny_model_dir), logit_chunk_size=7,
                                                   frozen=lambda: initial_model(adapted)))
    values = [v for p in apart for v in (p.chosen.reference_logprob, p.rejected.reference_logprob)]
    assert [v for p in same for v in (p.chosen.reference_logprob, p.rejected.reference_logprob)] == pytest.approx(
        values, abs=1e-4)
    assert adapted.training  # handed back as it was


def test_the_merge_equals_peft_merge_and_unload(tiny_model):
    model, _ = tiny_model
    adapted = _adapted(model)
    config = adapted.peft_config["default"]
    tied = adapted.get_base_model().all_tied_weights_keys
    merged = lora.merged_state_dict(adapted.state_dict(), config.lora_alpha / config.r, tied)
    expected = copy.deepcopy(adapted).merge_and_unload().state_dict()
    assert set(merged) == set(expected) - set(tied)
    assert all(torch.allclose(merged[k], expected[k], atol=1e-6) for k in merged)
