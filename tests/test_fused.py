"""The fused chunked projection: the loss and both gradients equal the one-shot computation (float32, 1e-5)."""

import json

import pytest
import torch

from offline_rl.fused import fused_weighted_logprobs
from offline_rl.learners import LEARNERS as LEARNER_MODULES


def one_shot(h, weight, targets, loss_of):
    logprobs = torch.log_softmax(h @ weight.T, dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return loss_of(logprobs)


@pytest.mark.parametrize("name, token_grad, loss_of", [
    ("nll", lambda lp: -torch.ones_like(lp), lambda lp: -lp.sum()),
    ("dft", lambda lp: -lp.exp(), lambda lp: -(lp.detach().exp() * lp).sum()),
    ("dft floor 0.3", lambda lp: -lp.exp().clamp(min=0.3), lambda lp: -(lp.detach().exp().clamp(min=0.3) * lp).sum()),
    ("prob alpha 2", lambda lp: -2 * lp.exp() ** 2, lambda lp: -(lp.exp() ** 2).sum()),
])
@pytest.mark.parametrize("chunk", [1, 7, 64])
def test_fused_equals_one_shot_in_float32(name, token_grad, loss_of, chunk):
    torch.manual_seed(0)
    h = torch.randn(50, 16, requires_grad=True)
    weight = (0.5 * torch.randn(300, 16)).requires_grad_()
    targets = torch.randint(0, 300, (50,))
    expected = one_shot(h, weight, targets, loss_of)
    expected_grads = torch.autograd.grad(expected, (h, weight))
    surrogate, logprobs = fused_weighted_logprobs(h, weight, targets, chunk, token_grad)
    (2.5 * surrogate).backward()  # an upstream factor (the token mean's) scales both gradients
    assert torch.allclose(h.grad, 2.5 * expected_grads[0], atol=1e-5, rtol=1e-5)
    assert torch.allclose(weight.grad, 2.5 * expected_grads[1], atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        reference = torch.log_softmax(h @ weight.T, -1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    assert torch.allclose(logprobs, reference, atol=1e-5) and not logprobs.requires_grad
    if name in ("nll", "dft"):  # a weighted sum of log-probs: the surrogate is the loss itself
        assert surrogate.item() == pytest.approx(expected.item(), rel=1e-5)


def test_a_wrong_sign_of_the_token_weight_fails_the_equality():
    torch.manual_seed(0)
    h = torch.randn(20, 8, requires_grad=True)
    weight = torch.randn(40, 8, requires_grad=True)
    targets = torch.randint(0, 40, (20,))
    expected = torch.autograd.grad(one_shot(h, weight, targets, lambda lp: -lp.sum()), (h,))[0]
    fused_weighted_logprobs(h, weight, targets, 8, lambda lp: torch.ones_like(lp))[0].backward()
    assert not torch.allclose(h.grad, expected, atol=1e-3)


@pytest.mark.parametrize("learner, extra", [("dft", []), ("sft", []), ("prob", ["--alpha", "2"])])
def test_training_through_the_fused_projection_equals_the_one_shot_projection(learner, extra, tmp_path, tiny_model_dir,
                                                                               tiny_model):
    from safetensors.torch import load_file

    from offline_rl import train
    from tests.test_train import world_dataset

    _, tokenizer = tiny_model
    world_dataset(tmp_path / "data", tokenizer, n_prompts=8)
    weights = {}
    for chunk in ("0", "16"):  # 0: one [B, T, V] projection, autograd; 16: fused chunks (the default path)
        out = tmp_path / f"{learner}-{chunk}"
        train.main(["--learner", learner, "--data", str(tmp_path / "data"), "--model", str(tiny_model_dir), "--out",
                    str(out), "--steps", "3", "--batch-size", "4", "--lr", "3e-3", "--logit-chunk-size", chunk,
                    "--report-to", "none", *extra])
        weights[chunk] = load_file(out / "model.safetensors")
        losses = [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]
        weights[chunk + "-loss"] = losses
    # the same losses at every step; the weights as close as Adam allows (it divides each gradient by its own size,
    # so a gradient of ~1e-9 that differs in its last bits moves its weight by a visible share of the rate)
    assert weights["0-loss"] == pytest.approx(weights["16-loss"], rel=1e-5)
    diffs = {name: (value - weights["16"][name]).abs().max().item() for name, value in weights["0"].items()}
    assert max(diffs.values()) < 1e-4 and sorted(diffs.values())[len(diffs) // 2] < 1e-6, diffs
    assert train.fused_projection(LEARNER_MODULES[learner], LEARNER_MODULES[learner].config(), train.TrainConfig(),
                                  None) is not None


@pytest.mark.parametrize("adapted", [False, True])
def test_activation_checkpointing_gives_the_same_losses_and_gradients_on_both_projections(tiny_model, adapted):
    """--gradient-checkpointing recomputes each decoder layer in backward: the same loss and gradients, to float
    rounding, through the checkpointed chunks and the fused projection, full or LoRA (whose frozen head the fused
    projection leaves without a gradient)."""
    import copy

    from offline_rl import lora
    from offline_rl.learners import dft
    from offline_rl.projection import fused_token_logprobs, token_logprobs
    from offline_rl.train import TrainConfig
    from offline_rl.views import collate
    from tests.test_lora import _examples

    model, tokenizer = tiny_model
    model = lora.attach(copy.deepcopy(model), TrainConfig(lora_rank=4, lora_alpha=8.0)) if adapted \
        else copy.deepcopy(model)
    model.config.use_cache = False
    model.train()
    batch = collate(_examples(tokenizer), 0)
    trained = [p for p in model.parameters() if p.requires_grad]
    rule = dft.LEARNER.token_grad(dft.LEARNER.config())

    def loss_and_grads(path: str):
        if path == "fused":
            logprobs, loss = fused_token_logprobs(model, batch, 7, rule)
        else:
            logprobs = token_logprobs(model, batch, 7)
            loss = -(logprobs.detach().exp() * logprobs * batch["response_mask"]).sum()  # DFT's sum
        return loss.detach(), torch.autograd.grad(loss, trained, allow_unused=True)

    for path in ("chunked", "fused"):
        model.gradient_checkpointing_disable()
        plain = loss_and_grads(path)
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        recomputed = loss_and_grads(path)
        assert torch.allclose(plain[0], recomputed[0], rtol=1e-6)
        assert all(torch.allclose(a, b, atol=1e-7, rtol=1e-5) for a, b in zip(plain[1], recomputed[1], strict=True))
        if path == "chunked":
            chunked = plain
    assert torch.allclose(chunked[0], plain[0], rtol=1e-5)  # and the two projections agree with each other
    assert all(torch.allclose(a, b, atol=1e-6, rtol=1e-4) for a, b in zip(chunked[1], plain[1], strict=True))
