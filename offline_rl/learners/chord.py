"""CHORD: GRPO with an expert dataset's SFT as a weighted auxiliary loss.

Zhang et al., "On-Policy RL Meets Off-Policy Experts: Harmonizing Supervised Fine-Tuning and Reinforcement Learning
via Dynamic Weighting" (arXiv 2508.11408, ICLR 2026), as its released code computes it (Trinity-RFT, ``mix_chord``):
each step's batch holds sampled responses and expert demonstrations, and

    loss = (1 - mu) * L_GRPO + mu * L_SFT

- L_GRPO: the clipped surrogate with group-relative advantages on the sampled rows (``ppo.clipped_surrogate``,
  against the stored behaviour log-probs), their token mean;
- L_SFT: on the expert rows, -sg(phi(p_t)) log p_t with phi(p) = p (1 - p) (CHORD-phi: it spares the tokens the
  model already finds near-certain and those it finds near-impossible; ``--token-weight none``: plain NLL,
  CHORD-mu), their token mean — the two means apart (the ``source-token`` normaliser);
- mu on a schedule over the optimizer steps (Trinity's ``mu_schedule_function``): from 0 up to ``--mu-peak`` over
  ``--mu-warmup-steps``, then a cosine down to ``--mu-valley`` over ``--mu-decay-steps``, then the valley. The
  defaults are CHORD-phi's published setting (mu = 0.1 throughout, phi on); CHORD-mu's is ``--mu-peak 0.9
  --mu-valley 0.05 --mu-decay-steps 200 --token-weight none`` (the example config's comments).

The expert data is a named dataset (``--expert-data``: a bin/import dataset, its accepted rows), mixed into each
training's examples as ``--expert-share`` of them (0.2: the example config's ``expert_data_ratio``), drawn anew for
every round's prompts. ``bin/iterate --learner chord --expert-data DIR`` runs it online; the report counts the
expert tokens apart from the sampled ones. Departures: the released code divides each part by the batch's number
of sequences of its kind times a micro-batch token mean; here each part's exact token mean over the step.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field, fields

import torch

from offline_rl.learner import Learner, Policy
from offline_rl.learners import mismatch, ppo
from offline_rl.learners.terms import dft_sum
from offline_rl.views import Example, collate, view_examples
from rollout.runtime import UsageError


@dataclass
class CHORDConfig:
    expert_data: str = field(default=None, metadata={"help": "chord: the expert dataset mixed into every step "
                                                             "(bin/import; its accepted rows) (required)"})
    expert_share: float = field(default=0.2, metadata={"help": "chord: the share of each training's examples that "
                                                               "are expert rows", "above": 0, "max": 0.9})
    mu_peak: float = field(default=0.1, metadata={"help": "chord: mu at the end of its warm-up (the SFT loss's "
                                                          "weight)", "min": 0, "max": 1})
    mu_valley: float = field(default=0.1, metadata={"help": "chord: mu after its cosine decay", "min": 0, "max": 1})
    mu_warmup_steps: int = field(default=0, metadata={"help": "chord: steps of mu's linear warm-up from 0",
                                                      "min": 0})
    mu_decay_steps: int = field(default=0, metadata={"help": "chord: steps of mu's cosine decay from peak to "
                                                             "valley (0: none)", "min": 0})
    token_weight: str = field(default="phi", metadata={"help": "chord: the expert tokens' weight: phi = p (1 - p) "
                                                               "(CHORD-phi) or none (CHORD-mu)",
                                                       "choices": ["phi", "none"]})
    clip_eps: float = field(default=0.2, metadata={"help": "chord: clip range epsilon of GRPO's ratio", "above": 0,
                                                   "max": 1})
    scale_advantages: bool = field(default=True, metadata={"help": "chord: divide group advantages by the group's "
                                                                   "std"})


Config = CHORDConfig


@dataclass(frozen=True)
class ExpertExample(Example):
    """A row of the expert dataset (batch['expert'] marks it)."""


def mu(step: int, cfg: Config) -> float:
    """The SFT loss's weight at optimizer step ``step`` (counted from 1)."""
    if step < cfg.mu_warmup_steps:
        return step / cfg.mu_warmup_steps * cfg.mu_peak
    if step >= cfg.mu_warmup_steps + cfg.mu_decay_steps:
        return cfg.mu_valley
    cosine = 0.5 * (1 + math.cos(math.pi * (step - cfg.mu_warmup_steps) / cfg.mu_decay_steps))
    return (cfg.mu_peak - cfg.mu_valley) * cosine + cfg.mu_valley


def check(cfg: Config) -> None:
    """The expert dataset, before any work: one line if it is not given or holds no accepted row."""
    if cfg.expert_data is None:
        raise UsageError("chord needs --expert-data: the expert demonstrations mixed into its GRPO steps "
                         "(a bin/import dataset)")
    expert_rows(cfg)


def expert_rows(cfg: Config) -> list[Example]:
    from rollout.dataset import complete_manifests, load_offline_dataset

    complete_manifests(cfg.expert_data)
    rows = view_examples(load_offline_dataset(cfg.expert_data), "accepted")
    if not rows:
        raise UsageError(f"chord --expert-data {cfg.expert_data} holds no accepted rows to imitate")
    return rows


def examples(groups: list[Example], cfg: Config, context) -> list[Example]:
    """The sampled rows with their group advantages (as grpo's), and expert rows making ``--expert-share`` of the
    whole, drawn with the run's seed and these samples' prompts (each round of bin/iterate draws its own)."""
    samples = ppo.examples(groups, cfg, context)
    if not samples:
        return []
    experts = expert_rows(cfg)
    wanted = max(1, round(cfg.expert_share / (1 - cfg.expert_share) * len(samples)))
    rng = random.Random(f"chord:{context.seed}:" + ",".join(sorted({e.prompt_id for e in samples})))
    drawn = [e for _ in range(wanted // len(experts)) for e in experts] + rng.sample(experts, wanted % len(experts))
    return samples + [ExpertExample(**{f.name: getattr(e, f.name) for f in fields(Example)}) for e in drawn]


def collate_mixed(examples: list[Example], pad_token_id: int) -> dict[str, torch.Tensor]:
    batch = collate(examples, pad_token_id)
    batch["expert"] = torch.tensor([float(isinstance(e, ExpertExample)) for e in examples])  # [B]
    return batch


def loss(policy: Policy, batch: dict[str, torch.Tensor], cfg: Config):
    mask, expert = batch["response_mask"], batch["expert"].unsqueeze(-1)  # [B, T], [B, 1]
    sampled, imitated = mask * (1 - expert), mask * expert  # [B, T] each
    surrogate, diag = ppo.clipped_surrogate(policy.tempered_logprobs, batch["behavior_logprobs"], batch, cfg)
    grpo_sum = -(surrogate * sampled).sum()
    p = policy.logprobs.detach().exp()  # [B, T]
    phi = p * (1 - p) if cfg.token_weight == "phi" else torch.ones_like(p)
    sft_sum = dft_sum(policy.logprobs, imitated, phi * imitated)
    weight = mu(policy.step + 1, cfg)
    with torch.no_grad():  # sampled-token metrics per sampled token, expert_* per expert token (source-token)
        metrics = {"nll_sum": -(policy.logprobs * sampled).sum(), "ratio_sum": (diag["ratio"] * sampled).sum(),
                   "clip_fraction_sum": (diag["clipped"] * sampled).sum(),
                   "expert_nll_sum": -(policy.logprobs * imitated).sum(), "expert_phi_sum": (phi * imitated).sum(),
                   "mu_max": torch.tensor(weight),
                   **mismatch.diagnostics(policy.tempered_logprobs, {**batch, "response_mask": sampled})}
    return torch.stack([(1 - weight) * grpo_sum, weight * sft_sum]), metrics


# divides the sampled rows by the behaviour policy: the loop checks --data's sampling settings and tempers the policy
LEARNER = Learner("chord", CHORDConfig, views=("groups",), loss=loss, examples=examples, collate=collate_mixed,
                  normaliser=lambda cfg: "source-token", inputs=("logprobs", "tempered_logprobs", "step"),
                  check=check, float32_projection=True)
