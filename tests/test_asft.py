"""ASFT as published: DFT plus lambda * KL(pi_base || pi) over the vocabulary, from the frozen base model's logits.
Hand-computed values and gradients, the chunked projection against whole logits, a direction test, and one
bin/train run through the trainer's frozen reference."""

import copy
import json

import pytest
import torch

from offline_rl.embedded import world
from offline_rl.learners import LEARNERS, asft
from offline_rl.projection import LogitHead, _chunk_kl, token_logprobs, token_logprobs_and_kl
from offline_rl.views import Example, collate
from tests.conftest import learner_loss


def test_the_chunk_kl_and_its_gradient_by_hand():
    torch.manual_seed(0)
    policy_head, base_head = torch.nn.Linear(4, 6, bias=False), torch.nn.Linear(4, 6, bias=False)
    hidden = torch.randn(3, 4, requires_grad=True)
    targets = torch.tensor([0, 5, 2])
    logprob, kl = _chunk_kl(LogitHead(policy_head), LogitHead(base_head), hidden, hidden.detach(), targets)
    z, zb = policy_head(hidden), base_head(hidden).detach()
    p, b = z.softmax(-1), zb.softmax(-1)
    expected = (b * (b.log() - p.log())).sum(-1)  # KL(b || p) written out
    assert torch.allclose(kl, expected, atol=1e-6) and (kl >= 0).all()
    assert torch.allclose(logprob, p.log()[torch.arange(3), targets], atol=1e-6)
    # d KL / d z = softmax(z) - b (the anchor pulls the policy's distribution onto the base's); through the chunk,
    # d KL / d hidden = (softmax(z) - b) W
    (grad_hidden,) = torch.autograd.grad(kl.sum(), hidden)
    assert torch.allclose(grad_hidden, (p - b).detach() @ policy_head.weight.detach(), atol=1e-6)


def test_the_loss_and_its_gradients_by_hand():
    logprobs = torch.tensor([[-0.5, -2.0, 0.0]], requires_grad=True)
    base_kl = torch.tensor([[0.3, 0.1, 9.0]], requires_grad=True)
    batch = {"response_mask": torch.tensor([[1.0, 1.0, 0.0]])}
    loss_sum, count, metrics = learner_loss(asft, logprobs, batch, asft.ASFTConfig(kl_coef=0.5), base_kl=base_kl)
    p = torch.tensor([0.5, 2.0]).neg().exp()
    assert loss_sum.item() == pytest.approx(float(-(p * torch.tensor([-0.5, -2.0])).sum() + 0.5 * 0.4), rel=1e-6)
    assert count.item() == 2 and metrics["kl_sum"].item() == pytest.approx(0.4)
    loss_sum.backward()
    assert torch.allclose(logprobs.grad, torch.tensor([[-p[0], -p[1], 0.0]]))  # -sg(p_t): DFT's weight
    assert torch.allclose(base_kl.grad, torch.tensor([[0.5, 0.5, 0.0]]))  # lambda on every response token


def _examples(tokenizer, n=4):
    out = []
    for p in world.load_split("train")[:n]:
        wrong = p.solution.replace("\\boxed{", "\\boxed{1")
        out.append(Example(p.id, tokenizer(p.prompt)["input_ids"], tokenizer(" " + wrong)["input_ids"] + [tokenizer.eos_token_id]))
    return out


def test_the_chunked_kl_equals_whole_logits_and_is_zero_against_itself(tiny_model):
    model, tokenizer = tiny_model
    batch = collate(_examples(tokenizer), tokenizer.eos_token_id)
    other = copy.deepcopy(model)
    with torch.no_grad():
        for param in other.parameters():
            param.add_(0.05 * torch.randn_like(param))
        logprobs, kl = token_logprobs_and_kl(model, other, batch, chunk_size=7)
        whole = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.log_softmax(-1)
        base = other(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.log_softmax(-1)
        expected = (base.exp() * (base - whole)).sum(-1) * batch["response_mask"]
        assert torch.allclose(kl, expected, atol=1e-5) and kl.sum() > 0
        assert torch.allclose(logprobs, token_logprobs(model, batch) * batch["response_mask"], atol=1e-5)
        assert token_logprobs_and_kl(model, model, batch, chunk_size=7)[1].abs().max() < 1e-5


def test_the_anchor_holds_the_policy_near_the_base(tiny_model):
    """Trained on wrong answers: the NLL of what it trains on falls either way; the anchor keeps the policy's KL
    from the base model smaller than DFT alone (lambda = 0) does. A flipped sign of the KL term fails here."""
    model, tokenizer = tiny_model
    batch = collate(_examples(tokenizer), tokenizer.eos_token_id)
    results = {}
    for coef in (0.0, 5.0):
        policy = copy.deepcopy(model)
        optimizer = torch.optim.Adam(policy.parameters(), lr=3e-3)
        for _ in range(6):
            logprobs, base_kl = token_logprobs_and_kl(policy, model, batch, chunk_size=8)
            loss_sum, count, _ = learner_loss(LEARNERS["asft"], logprobs, batch, asft.ASFTConfig(kl_coef=coef),
                                              base_kl=base_kl)
            (loss_sum / count).backward()
            optimizer.step()
            optimizer.zero_grad()
        with torch.no_grad():
            logprobs, kl = token_logprobs_and_kl(policy, model, batch, chunk_size=8)
        results[coef] = (-(logprobs * batch["response_mask"]).sum().item(), kl.sum().item())
    with torch.no_grad():
        start = -(token_logprobs(model, batch) * batch["response_mask"]).sum().item()
    assert results[0.0][0] < start and results[5.0][0] < start  # both learn the targets
    assert results[5.0][1] < 0.5 * results[0.0][1]  # the anchor: less drift from the base


def test_bin_train_runs_asft_on_demonstrations_with_its_frozen_base(tmp_path, tiny_model_dir):
    from offline_rl.cli import COMMANDS
    from offline_rl.train import main as train_main

    COMMANDS["import"][1]()(["--source", "world:train", "--prompts", "16", "--out", str(tmp_path / "demos"),
                 "--model", str(tiny_model_dir)])
    train_main(["--learner", "asft", "--data", str(tmp_path / "demos"), "--out", str(tmp_path / "asft"),
                "--steps", "2", "--batch-size", "4", "--kl-coef", "0.2", "--log-every", "1"])
    records = [json.loads(line) for line in (tmp_path / "asft" / "metrics.jsonl").read_text().splitlines()]
    assert records[0]["kl"] == pytest.approx(0.0, abs=1e-6)  # the policy starts as the base
    assert records[1]["kl"] > 0 and {"nll", "p"} <= set(records[1])
    # a second run from that policy: anchored to the original base (as bin/iterate's later rounds), its KL starts
    # above 0; anchored to its own start (the default), at 0
    first_kl = {}
    for name, extra in (("own", []), ("base", ["--base-model", str(tiny_model_dir)])):
        train_main(["--learner", "asft", "--data", str(tmp_path / "demos"), "--out", str(tmp_path / name),
                    "--model", str(tmp_path / "asft"), "--steps", "1", "--batch-size", "4", "--log-every", "1", *extra])
        first_kl[name] = json.loads((tmp_path / name / "metrics.jsonl").read_text().splitlines()[0])["kl"]
    assert first_kl["own"] == pytest.approx(0.0, abs=1e-6) and first_kl["base"] > 1e-4, first_kl
