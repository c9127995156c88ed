"""DPO: direct preference optimisation on (accepted, rejected) pairs of the same prompt.

Rafailov et al., "Direct Preference Optimization: Your Language Model is Secretly a
Reward Model" (arXiv 2305.18290), Eq. 7: ``-log sigmoid(beta * ((log pi - log ref)(y_w)
- (log pi - log ref)(y_l)))`` over sequence log-probabilities. Pairs come from the
offline dataset: a response with reward 1 and one with reward 0 to the same prompt,
never two identical responses, never a truncated "chosen" (unless --include-truncated).
Reference log-probs are computed once, before training, from the initial model
(``--reference model``: on the training device, sharded over data-parallel ranks, through the
same chunked float32 projection and under the same autocast as the policy, so the starting
margin is 0), or taken from the stored behaviour log-probs (``--reference behavior``), which is
exact only when every dataset was sampled from that model at temperature 1 with no top-p
truncation — checked against the manifests, refused otherwise. In a comparison DPO trains at a tenth of
the shared learning rate (``lr_scale``; a run's own lr or lr_scale replaces it): its loss is per pair of whole
sequences, and at the SFT-style rate (2e-4) it drove the embedded model to 16 % test-id avg@4 from 28 %
(over-optimisation); DPO recipes use a rate an order of magnitude or more below SFT's (Rafailov et al. 2023;
Tunstall et al. 2023).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch

from offline_rl.learner import Learner, Policy
from offline_rl.policies import ratio_temperature
from offline_rl.views import (
    Example,
    Pair,
    PairRows,
    ViewContext,
    collate_pairs,
    make_pairs,
    reference_from_model,
)
from rollout.runtime import NoExamples, UsageError


@dataclass
class DPOConfig:
    beta: float = field(default=0.1, metadata={"help": "dpo: strength of the implicit KL to the reference", "above": 0,
                                               "max": 1000})  # 1e308: a NaN loss at step 1
    pairing: str = field(default="one", metadata={
        "help": "dpo: pairs per prompt: all, one (random), hardest", "choices": ["all", "one", "hardest"]})
    reference: str = field(default="model", metadata={
        "help": "dpo: reference log-probs from the initial 'model' or the stored 'behavior' log-probs",
        "choices": ["model", "behavior"]})


Config = DPOConfig


def examples(rows: list[Example], cfg: Config, context: ViewContext) -> list[Pair]:
    """The pairs view, each response with its reference log-prob (the initial model's, or the stored behaviour's)."""
    if cfg.reference == "behavior":  # checked first: the settings of every dataset, before any pairing
        if ratio_temperature(context.manifests, context.model_path, "dpo --reference behavior",
                             approximate=False) != 1.0:
            raise UsageError("dpo --reference behavior is exact only for data sampled from this model at temperature "
                             "1 and top-p 1; use --reference model")
    pairs = make_pairs(rows, cfg.pairing, seed=context.seed, include_truncated=context.include_truncated)
    if not pairs:
        counts: dict[str, list[float]] = {}
        for e in rows:
            counts.setdefault(e.prompt_id, []).append(e.reward)
        right = sum(all(r == 1.0 for r in rs) for rs in counts.values())
        wrong = sum(all(r != 1.0 for r in rs) for rs in counts.values())
        raise NoExamples(f"no preference pairs for dpo: of {len(counts)} prompts {right} are all-right, {wrong} "
                         f"all-wrong, and {len(counts) - right - wrong} mix rewards only over identical responses")
    if cfg.reference == "behavior":
        return [Pair(replace(p.chosen, reference_logprob=sum(p.chosen.behavior_logprobs)),
                     replace(p.rejected, reference_logprob=sum(p.rejected.behavior_logprobs))) for p in pairs]
    return reference_from_model(pairs, context)


def loss(policy: Policy, batch: dict[str, torch.Tensor], cfg: Config):
    rows = PairRows.of(batch)
    sequence = (policy.logprobs * batch["response_mask"]).sum(-1)  # [2P]
    log_ratio = sequence - batch["reference_logprobs"]  # [2P]
    margin = cfg.beta * (rows.chosen(log_ratio) - rows.rejected(log_ratio))  # [P]: implicit reward, chosen - rejected
    loss_sum = -torch.nn.functional.logsigmoid(margin).sum()
    with torch.no_grad():
        metrics = {"reward_accuracy_sum": (margin > 0).float().sum(), "margin_sum": margin.sum(),
                   "nll_sum": -rows.chosen(sequence).sum()}
    return loss_sum, metrics


# float32 projection: the policy's log-probs in the same precision as the reference's
LEARNER = Learner("dpo", DPOConfig, views=("pairs",), loss=loss, examples=examples, normaliser=lambda cfg: "pair",
                  collate=collate_pairs, float32_projection=True, lr_scale=0.1)
