"""Every learner moves what it exists to move, after a few steps on a tiny model; a flipped sign fails here.

- sft, rft, dft (every weighting), prob, iwsft, adft, psft, eaft, pear lower the NLL of the responses they train on;
- nft raises accepted responses over rejected ones (through the implicit negative policy);
- dpo raises the chosen-minus-rejected margin of log-ratios to the reference (0 at the start);
- ppo and grpo raise the log-prob of positive-advantage responses relative to negative-advantage ones;
- chord does that and lowers the NLL of its expert rows.
Each learner runs its own ``loss`` (and ``collate``) in a plain Adam loop, as the training loop would (psft's
snapshot taken every ``snapshot_every`` steps, eaft's top-k entropy from the same chunked projection);
one learner of each family again with LoRA adapters on the frozen model (--lora-rank).
"""

import copy
from dataclasses import replace

import pytest
import torch

from offline_rl.embedded import world
from offline_rl.learners import LEARNERS, chord, dpo
from offline_rl.projection import token_logprobs, token_logprobs_and_entropy
from offline_rl.views import Example, collate, group_accuracies, group_advantages
from tests.conftest import learner_loss

STEPS, LR = 6, 3e-3


def _encode(tokenizer, problem, solution: str) -> tuple[list[int], list[int]]:
    return tokenizer(problem.prompt)["input_ids"], tokenizer(" " + solution)["input_ids"] + [tokenizer.eos_token_id]


def _wrong(solution: str) -> str:
    return solution.replace("\\boxed{", "\\boxed{1")  # the same text, a wrong final answer


@pytest.fixture(scope="module")
def pairs(tiny_model):
    """(right, wrong) responses to 4 world problems, with exact behaviour log-probs of the initial model."""
    model, tokenizer = tiny_model
    out = []
    for p in world.load_split("train")[:4]:
        prompt, right = _encode(tokenizer, p, p.solution)
        _, wrong = _encode(tokenizer, p, _wrong(p.solution))
        out.append((Example(p.id, prompt, right, reward=1.0), Example(p.id, prompt, wrong, reward=0.0)))
    with torch.no_grad():
        flat = [e for pair in out for e in pair]
        batch = collate(flat, tokenizer.eos_token_id)
        logprobs = token_logprobs(model, batch)
        behavior = [logprobs[i][batch["response_mask"][i].bool()].tolist() for i in range(len(flat))]
    flat = [replace(e, behavior_logprobs=b) for e, b in zip(flat, behavior, strict=True)]
    return [(flat[2 * i], flat[2 * i + 1]) for i in range(len(out))]


def _sequence_logprobs(model, examples, pad) -> torch.Tensor:
    with torch.no_grad():
        batch = collate(examples, pad)
        return (token_logprobs(model, batch) * batch["response_mask"]).sum(-1)  # [B]


def _train(model, learner, items, pad, cfg=None, adapted=False):
    """``learner``'s steps on a copy of ``model`` (``adapted``: LoRA adapters of rank 8 on it, the model frozen)."""
    model = copy.deepcopy(model)
    if adapted:
        from offline_rl import lora
        from offline_rl.train import TrainConfig

        model = lora.attach(model, TrainConfig(lora_rank=8, lora_alpha=16.0))
    cfg = cfg or learner.config()
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=LR)
    collate_items = learner.collate
    asks, inputs = learner.asks(cfg), {}
    for step in range(STEPS):
        batch = collate_items(items, pad)
        if "snapshot_logprobs" in asks and step % learner.snapshot_every(cfg) == 0:
            with torch.no_grad():
                inputs["snapshot_logprobs"] = token_logprobs(model, batch, chunk_size=8)
        if "step" in asks:
            inputs["step"] = step
        if "topk_entropy" in asks:
            logprobs, inputs["topk_entropy"] = token_logprobs_and_entropy(model, batch, 8, learner.topk(cfg))
        else:
            logprobs = token_logprobs(model, batch, chunk_size=8)
        loss_sum, count, _ = learner_loss(learner, logprobs, batch, cfg, **inputs)
        (loss_sum / count).sum().backward()
        optimizer.step()
        optimizer.zero_grad()
    return model


@pytest.mark.parametrize("name, settings", [
    ("sft", {}), ("rft", {}), ("dft", {}), ("dft", {"weighting": "geometric"}),
    ("dft", {"weighting": "sequence", "min_weight": 0.1}), ("prob", {"alpha": 1.0}), ("iwsft", {}), ("adft", {}),
    ("psft", {"snapshot_every": 3}), ("eaft", {}), ("pear", {})])
def test_likelihood_learners_lower_the_nll_of_their_targets(tiny_model, pairs, name, settings):
    model, tokenizer = tiny_model
    targets = [right for right, _ in pairs]
    learner = LEARNERS[name]
    before = -_sequence_logprobs(model, targets, tokenizer.eos_token_id).sum()
    after = -_sequence_logprobs(_train(model, learner, targets, tokenizer.eos_token_id, learner.config(**settings)),
                                targets, tokenizer.eos_token_id).sum()
    assert after < before - 1.0, (name, settings, before.item(), after.item())


def test_nft_raises_accepted_responses_over_rejected_ones(tiny_model, pairs):
    """Each pair shares all but its final answer: NFT's positive and negative terms balance on the shared
    tokens (at R = 1, r = 1/2 their weights are equal) and separate the answers."""
    model, tokenizer = tiny_model
    pad = tokenizer.eos_token_id
    items = group_accuracies([e for pair in pairs for e in pair])  # r_q = 1/2 for every prompt
    right, wrong = [e for e in items if e.reward == 1.0], [e for e in items if e.reward != 1.0]

    def gap(m) -> float:
        return (_sequence_logprobs(m, right, pad) - _sequence_logprobs(m, wrong, pad)).mean().item()

    assert gap(_train(model, LEARNERS["nft"], items, pad)) > gap(model) + 0.5


def test_dpo_raises_the_chosen_minus_rejected_margin(tiny_model, pairs):
    model, tokenizer = tiny_model
    pad = tokenizer.eos_token_id
    chosen, rejected = [w for w, _ in pairs], [lose for _, lose in pairs]
    reference_chosen, reference_rejected = _sequence_logprobs(model, chosen, pad), _sequence_logprobs(model, rejected, pad)
    items = [dpo.Pair(replace(w, reference_logprob=float(rw)), replace(lose, reference_logprob=float(rl)))
             for w, lose, rw, rl in zip(chosen, rejected, reference_chosen, reference_rejected, strict=True)]
    trained = _train(model, dpo.LEARNER, items, pad)
    margin = ((_sequence_logprobs(trained, chosen, pad) - reference_chosen)
              - (_sequence_logprobs(trained, rejected, pad) - reference_rejected))  # [P]; 0 before training
    assert margin.mean() > 0.5, margin


@pytest.mark.parametrize("name", ["ppo", "grpo"])
def test_ppo_and_grpo_raise_positive_advantage_responses_over_negative_ones(tiny_model, pairs, name):
    model, tokenizer = tiny_model
    pad = tokenizer.eos_token_id
    items = group_advantages([e for pair in pairs for e in pair], scale_by_std=True)
    positive = [e for e in items if e.advantage > 0]
    negative = [e for e in items if e.advantage < 0]
    assert len(positive) == len(negative) == len(pairs)

    def gap(m) -> float:
        return (_sequence_logprobs(m, positive, pad) - _sequence_logprobs(m, negative, pad)).mean().item()

    assert gap(_train(model, LEARNERS[name], items, pad)) > gap(model) + 0.5


def test_chord_raises_positive_advantage_responses_and_imitates_its_experts(tiny_model, pairs):
    """Its two parts each move what they exist to move: mixed (mu = 0.5), GRPO's part the positive-advantage
    responses over the negative ones; alone (mu = 1), the phi-weighted SFT the expert rows' likelihood (the tiny
    model finds them near-impossible, p(1 - p) ~ p: a small gradient, which Adam's normalisation still follows)."""
    model, tokenizer = tiny_model
    pad = tokenizer.eos_token_id
    samples = group_advantages([e for pair in pairs for e in pair], scale_by_std=True)
    positive, negative = [e for e in samples if e.advantage > 0], [e for e in samples if e.advantage < 0]
    experts = [chord.ExpertExample(p.id, *_encode(tokenizer, p, p.solution)) for p in world.load_split("train")[4:8]]

    def gap(m) -> float:
        return (_sequence_logprobs(m, positive, pad) - _sequence_logprobs(m, negative, pad)).mean().item()

    mixed = _train(model, chord.LEARNER, samples + experts, pad, chord.Config(mu_peak=0.5, mu_valley=0.5))
    assert gap(mixed) > gap(model) + 0.5
    imitating = _train(model, chord.LEARNER, samples + experts, pad, chord.Config(mu_peak=1.0, mu_valley=1.0))
    nll = [-_sequence_logprobs(m, experts, pad).sum().item() for m in (model, imitating)]
    assert nll[1] < nll[0] - 1.0, nll


@pytest.mark.parametrize("name", ["dft", "nft", "dpo", "grpo"])
def test_each_family_moves_its_target_under_lora(tiny_model, pairs, name):
    """One learner per family trained through LoRA adapters only: the same direction as in full."""
    model, tokenizer = tiny_model
    pad = tokenizer.eos_token_id
    if name == "dft":
        targets = [right for right, _ in pairs]
        before = -_sequence_logprobs(model, targets, pad).sum()
        assert -_sequence_logprobs(_train(model, LEARNERS["dft"], targets, pad, adapted=True), targets, pad).sum() \
            < before - 1.0
        return
    if name == "dpo":
        chosen, rejected = [w for w, _ in pairs], [lose for _, lose in pairs]
        reference_chosen = _sequence_logprobs(model, chosen, pad)
        reference_rejected = _sequence_logprobs(model, rejected, pad)
        items = [dpo.Pair(replace(w, reference_logprob=float(rw)), replace(lose, reference_logprob=float(rl)))
                 for w, lose, rw, rl in zip(chosen, rejected, reference_chosen, reference_rejected, strict=True)]
        trained = _train(model, dpo.LEARNER, items, pad, adapted=True)
        margin = ((_sequence_logprobs(trained, chosen, pad) - reference_chosen)
                  - (_sequence_logprobs(trained, rejected, pad) - reference_rejected))  # [P]
        assert margin.mean() > 0.5, margin
        return
    if name == "nft":
        items = group_accuracies([e for pair in pairs for e in pair])
        up, down = [e for e in items if e.reward == 1.0], [e for e in items if e.reward != 1.0]
    else:
        items = group_advantages([e for pair in pairs for e in pair], scale_by_std=True)
        up, down = [e for e in items if e.advantage > 0], [e for e in items if e.advantage < 0]

    def gap(m) -> float:
        return (_sequence_logprobs(m, up, pad) - _sequence_logprobs(m, down, pad)).mean().item()

    assert gap(_train(model, LEARNERS[name], items, pad, adapted=True)) > gap(model) + 0.5
