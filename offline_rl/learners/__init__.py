"""The learners. Each is one module with ``Config``, ``VIEWS`` (the dataset views it can train on, the
first its default), ``examples(dataset, context, cfg)`` and ``loss(logprobs, batch, cfg) -> (loss_sum,
n_tokens, metrics)``; ``--learner NAME`` picks one here."""

from offline_rl.learners import adft, dft, dpo, grpo, iwsft, nft, ppo, prob, rft, sft

LEARNERS = {"sft": sft, "rft": rft, "dft": dft, "dpo": dpo, "ppo": ppo, "iwsft": iwsft, "adft": adft, "prob": prob,
            "nft": nft,
            "grpo": grpo}
# each learner's hyper-parameters become flags of bin/train (--clip-eps, ...)
LEARNER_CONFIGS = tuple(module.Config for module in LEARNERS.values())
