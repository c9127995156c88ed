"""The DFT variants, prob, nft, grpo, psft, eaft, pear, chord and the mismatch correction against hand computations of
their losses and gradients."""

import math

import pytest
import torch

from offline_rl.learners import chord, dft, eaft, grpo, mismatch, nft, pear, ppo, prob, psft
from tests.conftest import learner_loss


def _batch(logp: list[list[float]], mask: list[list[float]], **extra):
    logprobs = torch.tensor(logp, requires_grad=True)
    return logprobs, {"response_mask": torch.tensor(mask), **extra}


LOGP = [[math.log(0.5), math.log(0.25), math.log(0.9)], [math.log(0.1), math.log(0.8), 0.0]]
MASK = [[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]]
P = [[0.5, 0.25, 0.9], [0.1, 0.8]]


@pytest.mark.parametrize("weighting, min_weight, expected", [
    ("token", 0.0, [[0.5, 0.25, 0.9], [0.1, 0.8]]),
    ("sequence", 0.0, [[0.1125] * 3, [0.08] * 2]),  # prod p: 0.5 * 0.25 * 0.9, 0.1 * 0.8
    ("geometric", 0.0, [[0.1125 ** (1 / 3)] * 3, [0.08 ** 0.5] * 2]),
    ("token", 0.3, [[0.5, 0.3, 0.9], [0.3, 0.8]]),  # the floor lifts 0.25 and 0.1
])
def test_dft_weights_loss_and_gradient_by_hand(weighting, min_weight, expected):
    logprobs, batch = _batch(LOGP, MASK)
    cfg = dft.Config(weighting=weighting, min_weight=min_weight)
    loss_sum, n, _ = learner_loss(dft, logprobs, batch, cfg)
    flat_w = [w for row in expected for w in row]
    flat_logp = [lp for row, m in zip(LOGP, MASK, strict=True) for lp, k in zip(row, m, strict=True) if k]
    assert n.item() == 5
    assert loss_sum.item() == pytest.approx(-sum(w * lp for w, lp in zip(flat_w, flat_logp, strict=True)), rel=1e-5)
    loss_sum.backward()  # the weight is detached: d loss / d log p_t = -w_t, and 0 off the response
    grad = [g for row, m in zip(logprobs.grad.tolist(), MASK, strict=True) for g, k in zip(row, m, strict=True) if k]
    assert grad == pytest.approx([-w for w in flat_w], rel=1e-5)
    assert logprobs.grad[1, 2].item() == 0.0


def test_prob_is_minus_p_to_the_alpha_and_alpha_one_has_dfts_gradient():
    for alpha in (1.0, 10.0, 0.5):
        logprobs, batch = _batch(LOGP, MASK)
        loss_sum, _, _ = learner_loss(prob, logprobs, batch, prob.Config(alpha=alpha))
        assert loss_sum.item() == pytest.approx(-sum(p ** alpha for row in P for p in row), rel=1e-5)
        loss_sum.backward()  # d(-p^a)/d log p = -a p^a
        assert logprobs.grad[0].tolist() == pytest.approx([-alpha * p ** alpha for p in P[0]], rel=1e-5)
    logprobs, batch = _batch(LOGP, MASK)
    learner_loss(prob, logprobs, batch, prob.Config(alpha=1.0))[0].backward()
    dft_logprobs, dft_batch = _batch(LOGP, MASK)
    learner_loss(dft, dft_logprobs, dft_batch, dft.Config())[0].backward()
    assert torch.allclose(logprobs.grad, dft_logprobs.grad)


def test_nft_loss_and_gradient_by_hand():
    """The official NFT (NVlabs/NFT, ratio_type token, normalize 1, clamp_negative 1): omega = 1 - r^ weights each
    prompt, the rejected term's floor is straight-through, so past it the gradient is bounded and not zero."""
    behavior = [[math.log(0.5), math.log(0.5), math.log(0.5)], [math.log(0.2), math.log(0.4), 0.0]]
    logprobs, batch = _batch(LOGP, MASK, behavior_logprobs=torch.tensor(behavior), rewards=torch.tensor([1.0, 0.0]),
                             group_accuracy=torch.tensor([0.5, 0.25]))
    loss_sum, n, metrics = learner_loss(nft, logprobs, batch, nft.Config())
    # accepted (r = 0.5, omega 0.5): -0.5 log R_t. Rejected (r = 0.25, omega 0.75), R = [0.5, 2]:
    # x = (1 - 0.25 R) / 0.75 = [0.875 / 0.75, 0.5 / 0.75] = [1.1667, 0.6667]; floored at 1: values [1.1667, 1]
    accepted = -0.5 * sum(lp - b for lp, b in zip(LOGP[0], behavior[0], strict=True))
    rejected = -0.75 * (math.log(0.875 / 0.75) + math.log(1.0))
    assert n.item() == 5 and loss_sum.item() == pytest.approx(accepted + rejected, rel=1e-5)
    assert metrics["clamped_sum"].item() == 1  # the second rejected token is past the floor
    loss_sum.backward()
    assert logprobs.grad[0].tolist() == pytest.approx([-0.5] * 3)  # accepted: omega * d(-log R)/d log pi
    # rejected: d/d log pi = omega * r R / ((1 - r) * value) > 0 (descent lowers pi), even past the floor
    assert logprobs.grad[1, :2].tolist() == pytest.approx([0.75 * 0.25 * 0.5 / (0.75 * (0.875 / 0.75)),
                                                           0.75 * 0.25 * 2.0 / 0.75], rel=1e-5)


def test_nft_pushes_a_rejected_token_down_however_far_past_the_floor_it_is():
    """A plain clamp's gradient is 0 past its floor and ~1/eps just before it; the straight-through one stays
    r R / (1 - r) times omega: bounded, and never 0 however much the rejected token's probability has grown."""
    for ratio in (1.5, 4.0, 40.0):  # x = (1 - r R) / (1 - r) with r = 0.5: 0, -2, -38
        logprobs, batch = _batch([[math.log(0.5 * ratio / 40)]], [[1.0]], behavior_logprobs=torch.tensor([[math.log(0.5 / 40)]]),
                                 rewards=torch.tensor([0.0]), group_accuracy=torch.tensor([0.5]))
        learner_loss(nft, logprobs, batch, nft.Config())[0].backward()
        assert logprobs.grad.item() == pytest.approx(0.5 * 0.5 * ratio / 0.5, rel=1e-5)  # omega r R / (1 - r)
    logprobs, batch = _batch([[0.0]], [[1.0]], behavior_logprobs=torch.tensor([[-5.0]]), rewards=torch.tensor([0.0]),
                             group_accuracy=torch.tensor([0.999]))  # R = e^5, r = 0.999 bounded to r^ = 0.98
    learner_loss(nft, logprobs, batch, nft.Config())[0].backward()
    assert logprobs.grad.item() == pytest.approx(0.02 * 0.98 * math.exp(5) / 0.02, rel=1e-4)  # omega = 1 - r^


def test_nft_trains_on_prompts_with_both_right_and_wrong_samples_only():
    from offline_rl.views import Example

    groups = [Example("a", [1], [2], reward=1.0, group_accuracy=1.0), Example("b", [1], [2], reward=0.0),
              Example("c", [1], [2], reward=1.0, group_accuracy=0.5), Example("c", [1], [3], reward=0.0, group_accuracy=0.5)]
    assert [e.prompt_id for e in nft.examples(groups, nft.Config(), None)] == ["c", "c"]


@pytest.mark.parametrize("aggregation", ["sequence", "token"])
def test_grpo_clipped_surrogate_and_aggregation_by_hand(aggregation):
    # two responses of one group: ratios exp(0.5) (clipped for A > 0), exp(-0.5) (clipped for A < 0), 1
    logprobs, batch = _batch([[0.0, -0.5, -1.0], [-0.5, -1.0, 0.0]], MASK,
                             behavior_logprobs=torch.tensor([[-0.5, -0.5, -1.0], [0.0, -1.0, 0.0]]),
                             advantages=torch.tensor([1.0, -1.0]))
    cfg = grpo.Config(aggregation=aggregation, clip_eps=0.2)
    loss_sum, units, metrics = learner_loss(grpo, logprobs, batch, cfg)
    # response 0: r = [e^.5, 1, 1], A = +1: min(rA, clip(r)A) = [1.2, 1, 1]; the first token is clipped (no gradient)
    # response 1: r = [e^-.5, 1], A = -1: min = [-0.8, -1]; the first token is clipped too
    share = [1 / 3, 1 / 2] if aggregation == "sequence" else [1.0, 1.0]
    assert units.item() == (2 if aggregation == "sequence" else 5)
    assert loss_sum.item() == pytest.approx(-(3.2 * share[0] - 1.8 * share[1]), rel=1e-6)
    loss_sum.backward()  # d(-r A)/d log pi = -r A on unclipped tokens
    expected = torch.tensor([[0.0, -share[0], -share[0]], [0.0, share[1], 0.0]])
    assert torch.allclose(logprobs.grad, expected, atol=1e-6), logprobs.grad
    assert metrics["abs_log_ratio_max"].item() == pytest.approx(0.5)
    assert metrics["clip_fraction_sum"].item() == pytest.approx(share[0] + share[1])


@pytest.mark.parametrize("min_weight", [0.0, 0.3])
def test_dfts_per_token_gradient_rule_is_its_loss_gradient_with_the_floor(min_weight):
    """The fused projection trains dft through ``token_grad``: it must be d loss / d log p, the floor included."""
    logprobs, batch = _batch(LOGP, MASK)
    cfg = dft.Config(min_weight=min_weight)
    learner_loss(dft, logprobs, batch, cfg)[0].backward()
    rule = dft.LEARNER.token_grad(cfg)(logprobs.detach())
    mask = torch.tensor(MASK).bool()
    assert torch.allclose(rule[mask], logprobs.grad[mask])
    assert (min_weight > 0) == bool((rule[mask] == -min_weight).any())  # 0.25 and 0.1 lifted to the floor


def test_group_advantages_are_scaled_by_the_groups_standard_deviation():
    from offline_rl.views import Example, group_advantages

    group = [Example("a", [1], [2], reward=r) for r in (1.0, 0.0, 0.0, 0.0)]  # mean 0.25, std sqrt(0.1875)
    scaled = [e.advantage for e in group_advantages(group, scale_by_std=True)]
    plain = [e.advantage for e in group_advantages(group, scale_by_std=False)]
    assert plain == pytest.approx([0.75, -0.25, -0.25, -0.25])
    assert scaled == pytest.approx([0.75 / (0.1875 ** 0.5 + 1e-6), *[-0.25 / (0.1875 ** 0.5 + 1e-6)] * 3])


def _close(tensor: torch.Tensor, expected: list) -> bool:
    return torch.allclose(tensor, torch.tensor(expected, dtype=tensor.dtype), rtol=1e-6, atol=1e-7)


def test_psft_clipped_surrogate_with_advantage_one_by_hand():
    """r = pi / pi_old = [1, 1.5, 0.5] on the first response, [1.2, e^-1] on the second; eps_high 0.28, eps_low 0.2."""
    snapshot = [[math.log(0.5), math.log(0.25 / 1.5), math.log(0.9 / 0.5)], [math.log(0.1 / 1.2), math.log(0.8) + 1, 0]]
    logprobs, batch = _batch(LOGP, MASK)
    loss_sum, n, metrics = learner_loss(psft, logprobs, batch, psft.Config(), snapshot_logprobs=torch.tensor(snapshot))
    # min(r, clip(r, 0.8, 1.28)) with A = 1: [1, 1.28, 0.5], [1.2, e^-1]: the lower clip is never the minimum
    assert n.item() == 5 and loss_sum.item() == pytest.approx(-(1 + 1.28 + 0.5 + 1.2 + math.exp(-1)), rel=1e-6)
    assert metrics["clip_fraction_sum"].item() == 1  # r = 1.5 only
    loss_sum.backward()  # d(-r)/d log pi = -r where r <= 1 + eps_high, 0 past it
    assert _close(logprobs.grad, [[-1, 0, -0.5], [-1.2, -math.exp(-1), 0]])


def test_eaft_weights_each_tokens_nll_by_its_normalised_topk_entropy_by_hand():
    entropy = torch.tensor([[math.log(20), 0.5 * math.log(20), 0.0], [0.25 * math.log(20), math.log(20), 9.0]])
    for alpha, expected in ((1.0, [[1, 0.5, 0], [0.25, 1]]), (2.0, [[1, 0.25, 0], [0.0625, 1]])):
        logprobs, batch = _batch(LOGP, MASK)
        cfg = eaft.Config(topk=20, entropy_alpha=alpha)
        loss_sum, n, metrics = learner_loss(eaft, logprobs, batch, cfg, topk_entropy=entropy)
        w = [x for row in expected for x in row]
        lp = [math.log(p) for row in P for p in row]
        assert n.item() == 5
        assert loss_sum.item() == pytest.approx(-sum(a * b for a, b in zip(w, lp, strict=True)), rel=1e-6)
        loss_sum.backward()  # the weight is detached: d loss / d log p_t = -w_t (0 off the response)
        assert _close(-logprobs.grad, [expected[0], [*expected[1], 0]])
        assert metrics["weight_sum"].item() == pytest.approx(sum(w))


@pytest.mark.parametrize("level, expected", [
    # d = log pi - log b: [0.2, -0.1, 0.4] on the first response, [0.3, -0.2] on the second; gamma 0.5, blocks of 2
    ("token", [[math.exp(-0.1 + 0.5 * 0.4), math.exp(0.4), 1.0], [math.exp(-0.2), 1.0]]),  # the suffix after t
    ("block", [[math.exp(0.4)] * 2 + [1.0], [1.0, 1.0]]),  # the first block's suffix is the second block, [0.4]
    ("sequence", [[1.6] * 3, [math.exp(0.1)] * 2]),  # e^0.5 = 1.65, clipped at --max-weight 1.6
])
def test_pear_weights_by_hand(level, expected):
    logprobs, batch = _batch(LOGP, MASK)
    batch["behavior_logprobs"] = torch.tensor(LOGP) - torch.tensor([[0.2, -0.1, 0.4], [0.3, -0.2, 0.0]])
    cfg = pear.Config(level=level, discount=0.5, block_size=2, max_weight=1.6)
    loss_sum, _, metrics = learner_loss(pear, logprobs, batch, cfg)
    w = [x for row in expected for x in row]
    lp = [math.log(p) for row in P for p in row]
    assert loss_sum.item() == pytest.approx(-sum(a * b for a, b in zip(w, lp, strict=True)), rel=1e-6)
    loss_sum.backward()  # detached weights: d loss / d log p_t = -w_t
    assert _close(-logprobs.grad, [expected[0], [*expected[1], 0]])
    assert metrics["mismatch_ratio_sum"].item() == pytest.approx(sum(math.exp(d) for d in (0.2, -0.1, 0.4, 0.3, -0.2)))


@pytest.mark.parametrize("correction, expected, clipped", [
    # log s/b = [0, 1, -1] and [0.5, -0.2]: rho = [1, e, 1/e], [e^.5, e^-.2]; C = 2
    ("none", [[1, 1, 1], [1, 1]], 0),
    ("token-tis", [[1, 2, math.exp(-1)], [math.exp(0.5), math.exp(-0.2)]], 1),  # e > 2 truncated
    ("token-mis", [[1, 0, 0], [math.exp(0.5), math.exp(-0.2)]], 2),  # e > 2 and 1/e < 1/2 masked
    ("sequence-tis", [[1, 1, 1], [math.exp(0.3)] * 2], 0),  # prod: e^0 = 1, e^0.3
    ("sequence-mis", [[1, 1, 1], [math.exp(0.3)] * 2], 0),
])
def test_mismatch_correction_weights_by_hand(correction, expected, clipped):
    from offline_rl.learner import Policy

    behavior = torch.tensor([[-1.0, -2.0, -1.0], [-1.0, -1.0, 0.0]])
    sampler = behavior + torch.tensor([[0.0, 1.0, -1.0], [0.5, -0.2, 0.0]])
    batch = {"response_mask": torch.tensor(MASK), "behavior_logprobs": behavior}
    cfg = ppo.Config(mismatch_correction=correction, mismatch_threshold=2.0)
    weight, metrics = mismatch.weights(Policy(sampler, sampler_logprobs=sampler), batch, cfg)
    assert _close(weight, [expected[0], [*expected[1], 0]])
    assert metrics.get("correction_clipped_sum", torch.tensor(0.0)).item() == clipped


def test_mismatch_diagnostics_by_hand():
    # r = pi / b = [1, 2, 1/2] on three tokens (C = 2: none strictly above or below): mean 7/6, mean square 7/4
    batch = {"response_mask": torch.tensor([[1.0, 1.0, 1.0, 0.0]]), "behavior_logprobs": torch.zeros(1, 4)}
    tempered = torch.tensor([[0.0, math.log(2), -math.log(2), 5.0]])
    d = mismatch.diagnostics(tempered, batch, threshold=1.5)
    assert d["mismatch_ratio_sum"].item() == pytest.approx(3.5)
    assert d["mismatch_ratio_sq_sum"].item() == pytest.approx(5.25)
    assert d["mismatch_ratio_max"].item() == pytest.approx(2.0)  # the token off the response is not counted
    assert (d["mismatch_above_sum"].item(), d["mismatch_below_sum"].item()) == (1, 1)  # against C = 1.5
    # k1 = sum(log b - log pi) = 0; k3 = sum(r - 1 - log r) = (1 - log 2) + (-1/2 + log 2) = 1/2
    assert d["mismatch_kl_k1_sum"].item() == pytest.approx(0.0, abs=1e-6)
    assert d["mismatch_kl_k3_sum"].item() == pytest.approx(0.5, rel=1e-6)


def test_an_injected_mismatch_is_corrected():
    """The engine's stored log-probs are off by delta = 0.5 on the second token (b = s - 0.5) and the policy is the
    sampling model (pi = s, the first step). Uncorrected, ppo reads a ratio of e^0.5 = 1.65 there, past its clip:
    the token gets no gradient. Corrected, the ratio divides by s (exactly 1) and the token's loss is weighted by
    s / b = e^0.5 (truncated at C = 2: kept), as importance sampling from b to s asks."""
    sampler = torch.tensor([[-1.0, -2.0, -0.5]])
    batch = {"response_mask": torch.ones(1, 3), "behavior_logprobs": sampler - torch.tensor([[0.0, 0.5, 0.0]]),
             "advantages": torch.tensor([1.0])}
    grads = {}
    for correction in ("none", "token-tis", "sequence-tis"):
        logprobs = sampler.clone().requires_grad_(True)
        cfg = ppo.Config(mismatch_correction=correction)
        loss_sum, _, metrics = learner_loss(ppo, logprobs, batch, cfg, sampler_logprobs=sampler)
        loss_sum.backward()
        grads[correction] = logprobs.grad[0].tolist()
        assert metrics["mismatch_kl_k1_sum"].item() == pytest.approx(-0.5)  # sum(log b - log pi): the injected delta
    assert grads["none"] == pytest.approx([-1.0, 0.0, -1.0])  # the mismatched token clipped away
    assert grads["token-tis"] == pytest.approx([-1.0, -math.exp(0.5), -1.0])  # each token weighted by its s / b
    assert grads["sequence-tis"] == pytest.approx([-math.exp(0.5)] * 3)  # the response's prod s / b on every token


def test_chord_mixes_grpo_and_phi_weighted_sft_each_over_its_own_tokens_by_hand():
    """Row 0 sampled (A = +1, ratio 1 on its 3 tokens), row 1 expert (p = 0.1, 0.8: phi = p (1 - p) = 0.09, 0.16)."""
    from offline_rl.train import token_mean

    logprobs, batch = _batch(LOGP, MASK, behavior_logprobs=torch.tensor(LOGP), advantages=torch.tensor([1.0, 0.0]),
                             expert=torch.tensor([0.0, 1.0]))
    cfg = chord.Config(mu_peak=0.25, mu_valley=0.25)
    loss_sum, units, metrics = learner_loss(chord, logprobs, batch, cfg, step=0)
    assert units.tolist() == [3, 2]  # sampled tokens, expert tokens: each part's own mean
    sft = -(0.09 * math.log(0.1) + 0.16 * math.log(0.8))
    assert loss_sum.tolist() == pytest.approx([0.75 * -3.0, 0.25 * sft], rel=1e-6)
    token_mean(loss_sum, units, 1).backward()  # (1 - mu) (-r A) / 3 on sampled tokens, mu (-phi) / 2 on expert ones
    assert _close(logprobs.grad, [[-0.25, -0.25, -0.25], [-0.25 * 0.09 / 2, -0.25 * 0.16 / 2, 0]])
    assert metrics["mu_max"].item() == 0.25 and metrics["expert_phi_sum"].item() == pytest.approx(0.25)
    none, _, _ = learner_loss(chord, logprobs, batch, chord.Config(mu_peak=0.25, mu_valley=0.25, token_weight="none"),
                              step=0)
    assert none[1].item() == pytest.approx(-0.25 * (math.log(0.1) + math.log(0.8)), rel=1e-6)  # CHORD-mu: plain NLL


def test_chords_mu_schedule_by_hand():
    """The released example config: warm-up over 200 steps to 0.5, cosine to 0.02 over 400, then 0.02."""
    cfg = chord.Config(mu_warmup_steps=200, mu_decay_steps=400, mu_peak=0.5, mu_valley=0.02)
    assert [chord.mu(s, cfg) for s in (0, 100, 200, 600, 900)] == pytest.approx([0, 0.25, 0.5, 0.02, 0.02])
    assert chord.mu(400, cfg) == pytest.approx(0.48 * 0.5 * (1 + math.cos(math.pi / 2)) + 0.02)
    assert chord.mu(7, chord.Config()) == 0.1  # CHORD-phi as published: 0.1 throughout
