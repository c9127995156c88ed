"""Every learner against its own record: the count the step divides by is the normaliser it declares (the one its
paper averages over), its loss reads only the policy inputs it asks for, and a per-token gradient rule (the fused
projection's) is autograd of its own loss. Each check is shown to fail under a perturbation."""

from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch

from offline_rl.learner import Policy, per_token
from offline_rl.learners import LEARNERS
from offline_rl.learners.chord import ExpertExample
from offline_rl.train import count_units
from offline_rl.views import Example, Pair, group_accuracies, group_advantages
from tests.conftest import learner_loss

# What each learner's paper averages its loss over; a learner whose record says otherwise fails here.
PAPER_NORMALISER = {"sft": "token", "rft": "token", "dft": "token", "prob": "token", "iwsft": "token",
                    "adft": "token", "asft": "token", "ppo": "token", "nft": "token", "dpo": "pair", "psft": "token",
                    "eaft": "token", "pear": "token", "chord": "source-token"}
SETTINGS = [(name, {}) for name in PAPER_NORMALISER] + [("grpo", {"aggregation": "sequence"}),
                                                         ("grpo", {"aggregation": "token"})]
# with the mismatch correction on, a ratio learner reads the sampling model's log-probs too
SETTINGS += [("ppo", {"mismatch_correction": "token-tis"}),
             ("grpo", {"mismatch_correction": "sequence-mis", "aggregation": "sequence"}),
             ("nft", {"mismatch_correction": "token-mis"}), ("iwsft", {"mismatch_correction": "sequence-tis"}),
             ("pear", {"level": "block", "block_size": 2}), ("pear", {"level": "sequence"})]
EXPECTED = {("grpo", "sequence"): "response", ("grpo", "token"): "token"}

ROWS = [  # two prompts, a right and a wrong response each, of unequal lengths: 3 + 2 + 4 + 1 = 10 tokens
    Example("a", [1, 2], [3, 4, 5], [-0.5, -1.0, -0.2], reward=1.0, reference_logprob=-2.0),
    Example("a", [1, 2], [6, 7], [-1.2, -0.3], reward=0.0, reference_logprob=-1.0),
    Example("b", [1], [3, 8, 9, 4], [-0.1, -0.7, -0.4, -0.9], reward=1.0, reference_logprob=-2.5),
    Example("b", [1], [5], [-2.0], reward=0.0, reference_logprob=-1.5),
]
ONE_PROCESS = SimpleNamespace(device=torch.device("cpu"), reduce=lambda t, reduction: t)


def _items(learner):
    """The learner's examples of ROWS and, counted by hand, how many tokens, responses and pairs they hold."""
    if learner.name == "dpo":
        pairs = [Pair(ROWS[0], ROWS[1]), Pair(ROWS[2], ROWS[3])]
        return pairs, {"token": 10, "response": 4, "pair": 2}
    if learner.name == "chord":  # two expert rows of 2 and 3 tokens beside the 10 sampled ones
        experts = [ExpertExample("x", [1], [3, 4]), ExpertExample("y", [1, 2], [5, 6, 7])]
        items = group_advantages(group_accuracies(ROWS), True)
        return [items[0], experts[0], *items[1:3], experts[1], items[3]], {"source-token": [10, 5]}
    return group_advantages(group_accuracies(ROWS), True), {"token": 10, "response": 4, "pair": None}


def _inputs(batch, seed=0):
    """Made-up policy log-probs on the response positions, [B, T], and every other input a loss may ask for."""
    mask = batch["response_mask"]
    generator = torch.Generator().manual_seed(seed)
    logprobs = (-torch.rand(mask.shape, generator=generator) * 2 * mask).requires_grad_(True)
    others = {"base_kl": torch.rand(mask.shape, generator=generator) * mask, "step": 3,
              "snapshot_logprobs": -torch.rand(mask.shape, generator=generator) * 2 * mask,
              "sampler_logprobs": -torch.rand(mask.shape, generator=generator) * 2 * mask,
              "topk_entropy": torch.rand(mask.shape, generator=generator) * 3 * mask}
    return logprobs, others


@pytest.mark.parametrize("name, settings", SETTINGS)
def test_the_step_divides_by_the_declared_normaliser(name, settings):
    learner = LEARNERS[name]
    cfg = learner.config(**settings)
    items, by_hand = _items(learner)
    expected = EXPECTED.get((name, settings.get("aggregation")), PAPER_NORMALISER.get(name))
    assert learner.normaliser(cfg) == expected
    halves = [learner.collate(items[: len(items) // 2], 0), learner.collate(items[len(items) // 2 :], 0)]
    counted = count_units(learner, cfg, halves, ONE_PROCESS)
    assert (counted.tolist() if counted.dim() else float(counted)) == by_hand[expected]  # source-token: [2]
    if expected != "token":  # a record that declared the default instead is caught by the count
        tokens = count_units(replace(learner, normaliser=per_token), cfg, halves, ONE_PROCESS)
        assert float(tokens) != by_hand[expected]


@pytest.mark.parametrize("name, settings", SETTINGS)
def test_a_loss_reads_only_the_inputs_its_record_asks_for(name, settings):
    learner = LEARNERS[name]
    cfg = learner.config(**settings)
    batch = learner.collate(_items(learner)[0], 0)
    logprobs, others = _inputs(batch)
    loss_sum, _, metrics = learner_loss(learner, logprobs, batch, cfg, **others)
    assert torch.isfinite(loss_sum).all() and all(torch.isfinite(torch.as_tensor(v)) for v in metrics.values())
    asks = learner.asks(cfg)
    for asked in set(asks) - {"logprobs"}:  # without an input it asked for, the loss cannot run
        given = {"tempered_logprobs": logprobs, **others}
        with pytest.raises(TypeError):
            learner.loss(Policy(logprobs, **{k: v for k, v in given.items() if k in asks and k != asked}), batch, cfg)


@pytest.mark.parametrize("name", [name for name, learner in LEARNERS.items() if learner.behavior_ratio])
def test_every_ratio_learner_logs_the_training_inference_mismatch(name):
    learner = LEARNERS[name]
    batch = learner.collate(_items(learner)[0], 0)
    logprobs, others = _inputs(batch)
    _, _, metrics = learner_loss(learner, logprobs, batch, learner.config(), **others)
    assert {"mismatch_ratio_sum", "mismatch_ratio_sq_sum", "mismatch_ratio_max", "mismatch_above_sum",
            "mismatch_below_sum", "mismatch_kl_k1_sum", "mismatch_kl_k3_sum"} <= set(metrics)


RULES = [("sft", {}), ("rft", {}), ("dft", {}), ("dft", {"min_weight": 0.3}), ("prob", {"alpha": 1.0}),
         ("prob", {"alpha": 10.0}), ("prob", {"alpha": 0.5})]


def test_every_learner_with_a_gradient_rule_is_listed():
    rules = {(name, tuple(sorted(s.items()))) for name, s in RULES}
    with_rule = {name for name, learner in LEARNERS.items() if learner.token_grad is not None}
    assert with_rule == {name for name, _ in rules}
    assert LEARNERS["dft"].token_grad(LEARNERS["dft"].config(weighting="sequence")) is None  # needs whole responses


@pytest.mark.parametrize("name, settings", RULES)
def test_the_per_token_gradient_rule_is_autograd_of_the_learners_own_loss(name, settings):
    learner = LEARNERS[name]
    cfg = learner.config(**settings)
    batch = learner.collate(_items(learner)[0], 0)
    mask = batch["response_mask"]
    logprobs, others = _inputs(batch, seed=1)
    loss_sum, _, _ = learner_loss(learner, logprobs, batch, cfg)
    loss_sum.backward()
    rule = learner.token_grad(cfg)(logprobs.detach()) * mask  # [B, T]: d loss / d log p_t, 0 off the response
    assert torch.allclose(logprobs.grad, rule, rtol=1e-5, atol=1e-7)
    # the check is tight enough to catch a rule off by 1 % on the response tokens
    assert not torch.allclose(logprobs.grad, rule * 1.01, rtol=1e-5, atol=1e-7)
