import math

import pytest
import torch

from offline_rl.learners import LEARNERS, dft, rft
from offline_rl.projection import token_logprobs
from offline_rl.train import token_mean
from offline_rl.views import VIEWS, Example, collate
from tests.conftest import learner_loss


def hand_batch(probs):
    logprobs = torch.tensor([probs]).log().requires_grad_(True)  # [1, 3]
    return logprobs, {"response_mask": torch.ones(1, len(probs))}


def test_dft_loss_hand_worked():
    # p = (1/2, 1/4, 1): NLL = ln2 + ln4 + 0 = 3 ln2; DFT = 1/2 ln2 + 1/4 ln4 + 0 = ln2
    logprobs, batch = hand_batch([0.5, 0.25, 1.0])
    loss_sum, n_tokens, metrics = learner_loss(dft, logprobs, batch, dft.Config())
    assert math.isclose(loss_sum.item(), math.log(2), rel_tol=1e-6)
    assert math.isclose(metrics["nll_sum"].item(), 3 * math.log(2), rel_tol=1e-6)
    assert n_tokens.item() == 3
    # d/d logp_t of -sg(p_t) * logp_t is -p_t: the weight gets no gradient of its own
    loss_sum.backward()
    assert torch.allclose(logprobs.grad, -torch.tensor([[0.5, 0.25, 1.0]]))


def test_rft_loss_is_masked_nll():
    logprobs, batch = hand_batch([0.5, 0.25, 1.0])
    batch["response_mask"] = torch.tensor([[1.0, 0.0, 1.0]])
    loss_sum, n_tokens, _ = learner_loss(rft, logprobs, batch, rft.Config())
    assert math.isclose(loss_sum.item(), math.log(2), rel_tol=1e-6) and n_tokens.item() == 2


def tiny_batch(tokenizer):
    examples = [
        Example("a", tokenizer("Question: Mia has 3 apples.\nAnswer:")["input_ids"], tokenizer(" 3 + 4 = 7.")["input_ids"]),
        Example("b", tokenizer("Question: Tom has 12 cards.\nAnswer:")["input_ids"], tokenizer(" The answer is \\boxed{12}.")["input_ids"]),
    ]
    return collate(examples, tokenizer.eos_token_id)


def test_dft_token_loss_and_gradient_on_a_model(tiny_model):
    model, tokenizer = tiny_model
    batch = tiny_batch(tokenizer)
    params = [p for p in model.parameters() if p.requires_grad]
    positions = batch["response_mask"].nonzero().tolist()
    for b, t in positions[:: max(1, len(positions) // 4)]:  # a few response tokens, one at a time
        only = torch.zeros_like(batch["response_mask"])
        only[b, t] = 1.0
        one = {**batch, "response_mask": only}

        nll = -(token_logprobs(model, one) * only).sum()
        grad_nll = torch.autograd.grad(nll, params)
        p = math.exp(-nll.item())

        dft_loss, _, _ = learner_loss(dft, token_logprobs(model, one), one, dft.Config())
        assert math.isclose(dft_loss.item(), p * nll.item(), rel_tol=1e-5)  # loss_t = NLL_t * sg(p_t)
        grad_dft = torch.autograd.grad(dft_loss, params)
        for g_dft, g_nll in zip(grad_dft, grad_nll, strict=True):
            assert torch.allclose(g_dft, p * g_nll, atol=1e-7, rtol=1e-4)  # grad = p_t * grad NLL_t


def test_collate_masks_exactly_the_response():
    e = Example("a", [1, 2, 3], [4, 5])
    batch = collate([e, Example("b", [1], [9, 9, 9, 9])], pad_token_id=0)
    # targets at t are tokens at t + 1; the response [4, 5] is predicted from positions 2 and 3
    assert batch["targets"][0].tolist()[:4] == [2, 3, 4, 5]
    assert batch["response_mask"][0].tolist() == [0, 0, 1, 1, 0]
    assert batch["response_mask"][1].tolist() == [1, 1, 1, 1, 0]


def test_token_mean_over_micro_batches_equals_full_batch():
    sums, counts = torch.tensor([3.0, 5.0, 1.0]), torch.tensor([2.0, 4.0, 1.0])
    total = sum(token_mean(s, counts.sum(), 1) for s in sums)
    assert math.isclose(total.item(), 9.0 / 7.0, rel_tol=1e-6)


def test_every_learner_is_registered_by_name():
    assert {"sft", "rft", "dft", "dpo", "ppo", "iwsft", "adft", "asft"} <= set(LEARNERS)
    for name, learner in LEARNERS.items():  # an explicit record, nothing looked up by name
        assert learner.name == name and callable(learner.loss) and callable(learner.examples)
        assert learner.views and all(view in VIEWS for view in learner.views) and learner.config()


def test_ppo_surrogate_at_ratio_one_is_minus_the_mean_advantage():
    from offline_rl.learners import ppo

    behavior = torch.log(torch.tensor([[0.5, 0.25, 0.8], [0.1, 0.9, 0.3]]))  # [B=2, T=3]
    logprobs = behavior.clone().requires_grad_(True)  # pi_theta = pi_behaviour: ratio 1 everywhere
    batch = {"response_mask": torch.ones(2, 3), "behavior_logprobs": behavior, "advantages": torch.tensor([1.0, -0.5])}
    loss_sum, n_tokens, metrics = learner_loss(ppo, logprobs, batch, ppo.Config(clip_eps=0.2))
    # token-mean of -A: (3 * -1 + 3 * 0.5) / 6 = -0.25
    assert math.isclose((loss_sum / n_tokens).item(), -0.25, rel_tol=1e-6)
    assert metrics["clip_fraction_sum"].item() == 0 and math.isclose(metrics["ratio_sum"].item(), 6.0, rel_tol=1e-6)
    loss_sum.backward()  # d(-ratio * A)/d logp = -A at ratio 1
    assert torch.allclose(logprobs.grad, torch.tensor([[-1.0] * 3, [0.5] * 3]))


def test_ppo_clip_engages_beyond_epsilon():
    from offline_rl.learners import ppo

    behavior = torch.zeros(1, 3)
    # ratios 1.1 (inside), 1.5 (above 1 + eps), 0.5 (below 1 - eps); advantage +1
    logprobs = torch.log(torch.tensor([[1.1, 1.5, 0.5]])).requires_grad_(True)
    batch = {"response_mask": torch.ones(1, 3), "behavior_logprobs": behavior, "advantages": torch.tensor([1.0])}
    loss_sum, _, metrics = learner_loss(ppo, logprobs, batch, ppo.Config(clip_eps=0.2))
    # min(r A, clip(r) A) with A > 0: 1.1, 1.2 (clipped), 0.5 (unclipped: the pessimistic side)
    assert math.isclose(loss_sum.item(), -(1.1 + 1.2 + 0.5), rel_tol=1e-6)
    assert metrics["clip_fraction_sum"].item() == 1
    loss_sum.backward()
    assert logprobs.grad[0, 1].item() == 0.0  # a clipped token gets no gradient
    assert logprobs.grad[0, 0].item() != 0.0 and logprobs.grad[0, 2].item() != 0.0


def test_group_advantages_sum_to_zero_per_prompt():
    from offline_rl.views import group_advantages

    rewards = {"a": [1.0, 0.0, 0.0, 1.0], "b": [1.0, 1.0, 1.0, 0.0], "c": [0.0, 0.0, 0.0, 0.0]}
    examples = [Example(pid, [1], [2], reward=r) for pid, rs in rewards.items() for r in rs]
    for scale in (False, True):
        result = group_advantages(examples, scale_by_std=scale)
        for pid in rewards:
            assert abs(sum(e.advantage for e in result if e.prompt_id == pid)) < 1e-6
    plain = group_advantages(examples, scale_by_std=False)
    assert [e.advantage for e in plain if e.prompt_id == "b"] == [0.25, 0.25, 0.25, -0.75]


def test_dpo_loss_is_log_two_when_policy_equals_reference():
    from offline_rl.learners import dpo

    pairs = [dpo.Pair(Example("a", [1], [2, 3], reward=1.0), Example("a", [1], [4], reward=0.0)),
             dpo.Pair(Example("b", [1], [5], reward=1.0), Example("b", [1], [6, 7, 8], reward=0.0))]
    batch = dpo.collate_pairs(pairs, pad_token_id=0)
    logprobs = -torch.rand(batch["targets"].shape)  # [2P, T]: any policy...
    sequences = (logprobs * batch["response_mask"]).sum(-1)
    batch["reference_logprobs"] = sequences.clone()  # ...that equals its reference
    loss_sum, pairs_count, metrics = learner_loss(dpo, logprobs, batch, dpo.Config(beta=0.1))
    assert pairs_count.item() == 2
    assert math.isclose((loss_sum / pairs_count).item(), math.log(2), rel_tol=1e-6)  # -log sigmoid(0)
    assert metrics["margin_sum"].item() == 0.0


def test_dpo_pairs_never_tie_or_repeat():
    from offline_rl.learners import dpo

    same = [9, 9]
    group = [Example("a", [1], same, [-0.1, -0.1], 1.0), Example("a", [1], same, [-0.1, -0.1], 0.0),
             Example("a", [1], [7], [-3.0], 0.0), Example("a", [1], [8], [-0.5], 1.0),
             Example("b", [1], [5], [-1.0], 1.0), Example("b", [1], [6], [-1.0], 1.0)]  # b: all right, no pair
    for pairing in ("all", "one", "hardest"):
        pairs = dpo.make_pairs(group, pairing)
        assert pairs and all(p.chosen.prompt_id == p.rejected.prompt_id == "a" for p in pairs)
        assert all(p.chosen.reward == 1.0 and p.rejected.reward == 0.0 for p in pairs)
        assert all(p.chosen.response_token_ids != p.rejected.response_token_ids for p in pairs)
    assert len(dpo.make_pairs(group, "all")) == 3  # (same, 7), (8, same), (8, 7); never (same, same)
    hardest = dpo.make_pairs(group, "hardest")[0]  # least likely accepted (-3 is rejected) vs likeliest rejection
    assert (hardest.chosen.response_token_ids, hardest.rejected.response_token_ids) == ([8], same)


def test_chunked_logprobs_and_dft_equal_the_naive_formula(tiny_model):
    model, tokenizer = tiny_model
    batch = tiny_batch(tokenizer)
    mask = batch["response_mask"]
    params = [p for p in model.parameters() if p.requires_grad]

    naive = token_logprobs(model, batch, chunk_size=0) * mask
    naive_loss, _, _ = learner_loss(dft, naive, batch, dft.Config())
    naive_grads = torch.autograd.grad(naive_loss, params)
    for chunk in (1, 3, 1024):
        chunked = token_logprobs(model, batch, chunk_size=chunk)
        assert torch.allclose(chunked, naive, atol=1e-5)
        chunked_loss, _, _ = learner_loss(dft, chunked, batch, dft.Config())
        assert abs(chunked_loss.item() - naive_loss.item()) <= 1e-5
        for g_chunked, g_naive in zip(torch.autograd.grad(chunked_loss, params), naive_grads, strict=True):
            assert torch.allclose(g_chunked, g_naive, atol=1e-5, rtol=1e-4)


def test_iwsft_weights_are_clipped_detached_policy_over_behaviour_ratios():
    from offline_rl.learners import iwsft

    behavior = torch.log(torch.tensor([[0.5, 0.5], [0.5, 0.5]]))
    # sequence 0: policy = behaviour (weight 1); sequence 1: policy 4x likelier per token (weight 4 -> clipped to 2)
    logprobs = torch.log(torch.tensor([[0.5, 0.5], [1.0, 1.0]])).requires_grad_(True)
    batch = {"response_mask": torch.ones(2, 2), "behavior_logprobs": behavior}
    loss_sum, n, metrics = learner_loss(iwsft, logprobs, batch, iwsft.Config(max_weight=2.0))
    # NLL: 2 ln2 for sequence 0 (weight 1), 0 for sequence 1
    assert math.isclose(loss_sum.item(), 2 * math.log(2), rel_tol=1e-6) and n.item() == 4
    assert math.isclose(metrics["weight_sum"].item(), 2 * 1 + 2 * 2, rel_tol=1e-6)
    loss_sum.backward()
    assert torch.allclose(logprobs.grad, torch.tensor([[-1.0, -1.0], [-2.0, -2.0]]))  # -w per token


def test_adft_is_dft_at_the_anchor_and_pulls_back_when_away():
    from offline_rl.learners import adft, dft

    behavior = torch.log(torch.tensor([[0.5, 0.25, 0.8]]))
    batch = {"response_mask": torch.ones(1, 3), "behavior_logprobs": behavior}
    at_anchor = behavior.clone().requires_grad_(True)
    anchored, _, metrics = learner_loss(adft, at_anchor, batch, adft.Config(anchor_coef=1.0))
    plain, _, _ = learner_loss(dft, behavior.clone(), batch, dft.Config())
    assert math.isclose(anchored.item(), plain.item(), rel_tol=1e-6) and metrics["kl_sum"].item() == 0.0
    away = torch.log(torch.tensor([[0.9, 0.9, 0.9]]))
    _, _, metrics = learner_loss(adft, away, batch, adft.Config(anchor_coef=1.0))
    assert metrics["kl_sum"].item() > 0


def test_adft_anchor_is_unbiased_for_kl_of_behaviour_to_policy():
    """Tokens drawn from b: the mean of exp(d) - d - 1 (d = log pi - log b) is KL(b||pi), enumerated exactly;
    k3 on log b - log pi, the old estimator, is not."""
    from offline_rl.learners.adft import anchor_kl

    generator = torch.Generator().manual_seed(0)
    behavior = torch.softmax(2 * torch.randn(8, generator=generator), -1)  # b
    policy = torch.softmax(2 * torch.randn(8, generator=generator), -1)  # pi
    exact = (behavior * (behavior.log() - policy.log())).sum().item()  # KL(b || pi) by enumeration
    tokens = torch.multinomial(behavior, 400_000, replacement=True, generator=generator)
    mask = torch.ones(1, len(tokens))
    estimate = anchor_kl(policy.log()[tokens][None], behavior.log()[tokens][None], mask).item() / len(tokens)
    assert abs(estimate - exact) <= 0.03 * exact, (estimate, exact)
    d = behavior.log()[tokens] - policy.log()[tokens]
    assert abs((d.exp() - d - 1).mean().item() - exact) > 0.2 * exact  # k3 of log(b/pi) under b: not this KL
    # its gradient in log pi is pi/b - 1: bounded below by -1 wherever pi -> 0
    logp = torch.tensor([[-30.0, 0.0]], requires_grad=True)
    anchor_kl(logp, torch.tensor([[-0.1, 0.0]]), torch.ones(1, 2)).backward()
    assert logp.grad[0, 0].item() >= -1.0


def test_temperature_and_float32_projection(tiny_model):
    from offline_rl.projection import LogitHead, _chunk_logprobs, token_logprobs_at

    model, tokenizer = tiny_model
    examples = [Example("a", tokenizer("Question: 1+2?\nAnswer:")["input_ids"], tokenizer(" 3 \\boxed{3}")["input_ids"])]
    batch = collate(examples, tokenizer.eos_token_id)
    mask = batch["response_mask"].bool()
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
        expected = (logits / 0.7).log_softmax(-1).gather(-1, batch["targets"].unsqueeze(-1)).squeeze(-1)
        for chunk in (0, 2):
            tempered = token_logprobs_at(model, batch, chunk, (1.0, 0.7))[1]
            assert torch.allclose(tempered[mask], expected[mask], atol=1e-5)
        # under bf16 autocast the float32 projection stays exact; the default one carries bf16's error
        hidden = torch.randn(16, model.config.hidden_size, generator=torch.Generator().manual_seed(0))
        targets = torch.arange(16)
        exact = _chunk_logprobs(LogitHead(model.lm_head), hidden, targets, (1.0,), False)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            high = _chunk_logprobs(LogitHead(model.lm_head), hidden, targets, (1.0,), True)
            low = _chunk_logprobs(LogitHead(model.lm_head), hidden, targets, (1.0,), False)
    assert torch.allclose(high, exact, atol=1e-5)
    assert (low - exact).abs().max() > 1e-3


def test_adft_anchor_pulls_the_policy_back_toward_the_behaviour():
    from offline_rl.learners import adft

    batch = {"response_mask": torch.ones(1, 2), "behavior_logprobs": torch.log(torch.tensor([[0.5, 0.5]]))}
    logp = torch.log(torch.tensor([[0.9, 0.1]])).requires_grad_(True)  # above, below the behaviour
    anchored, _, _ = learner_loss(adft, logp, batch, adft.Config(anchor_coef=1.0))
    plain, _, _ = learner_loss(adft, logp, batch, adft.Config(anchor_coef=0.0))
    (anchored - plain).backward()
    # d/dlog pi of exp(d) - d - 1 is pi/b - 1: descent lowers log pi where pi > b and raises it where pi < b
    assert torch.allclose(logp.grad, torch.tensor([[0.9 / 0.5 - 1, 0.1 / 0.5 - 1]]), atol=1e-6)


@pytest.mark.parametrize("family, settings", [
    ("gemma2", {"final_logit_softcapping": 2.0, "attn_logit_softcapping": None, "head_dim": 16}),
    ("cohere", {"logit_scale": 0.25}),
    ("granite", {"logits_scaling": 4.0}),
])
def test_the_chunked_projection_applies_the_models_logit_scaling_and_softcapping(family, settings):
    """Gemma-2 soft-caps its logits, Cohere and Granite scale them after lm_head: the chunked projection (and so
    every ratio and DPO's reference) reads the same log-probs as the model's own forward, and the fused
    projection, which has neither, is not used for them."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from offline_rl.projection import logit_transform, token_logprobs_at

    torch.manual_seed(0)
    config = AutoConfig.for_model(family, vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                  num_attention_heads=2, num_key_value_heads=1, **settings)
    model = AutoModelForCausalLM.from_config(config).eval()
    for p in model.parameters():  # logits large enough for the cap and the scales to matter
        p.data.mul_(8.0)
    batch = collate([Example("a", [1, 2, 3], [4, 5, 6, 7]), Example("b", [1], [8, 9])], pad_token_id=0)
    with torch.no_grad():
        own = token_logprobs_at(model, batch, chunk_size=0)  # [1, B, T] from the model's own forward
        chunked = token_logprobs_at(model, batch, chunk_size=2, float32=True)
    mask = batch["response_mask"].bool()
    assert torch.allclose(own[0][mask], chunked[0][mask], atol=1e-4)
    assert logit_transform(model) != (1.0, None)
    plain = AutoModelForCausalLM.from_config(AutoConfig.for_model("qwen2", vocab_size=64, hidden_size=32,
                                                                  intermediate_size=64, num_hidden_layers=1,
                                                                  num_attention_heads=2, num_key_value_heads=1))
    assert logit_transform(plain) == (1.0, None)


def test_dpo_draws_its_pairs_with_the_runs_seed():
    from offline_rl.learners import dpo
    from offline_rl.views import ViewContext

    rows = [Example(f"p{p}", [1], [2 + i], reward=float(i < 2), behavior_logprobs=[-1.0]) for p in range(8) for i in range(4)]

    def pairs(seed):
        manifests = {"d": {"model": "m", "sampling": {"temperature": 1.0, "top_p": 1.0}}}
        drawn = dpo.examples(rows, dpo.Config(reference="behavior"), ViewContext(None, manifests, "m", seed=seed))
        return [(p.chosen.response_token_ids, p.rejected.response_token_ids) for p in drawn]

    assert pairs(0) == pairs(0) and pairs(0) != pairs(1)
