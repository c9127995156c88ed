"""The learners: one file each, ending with its record (``offline_rl.learner.Learner``): config, views, the
examples it makes of a view, its loss, what the loss averages over, its per-token gradient when it has one, and
what it needs from the data. ``--learner NAME`` picks one here."""

from offline_rl.learners import adft, asft, chord, dft, dpo, eaft, grpo, iwsft, nft, pear, ppo, prob, psft, rft, sft

LEARNERS = {module.LEARNER.name: module.LEARNER
            for module in (sft, rft, dft, dpo, ppo, iwsft, adft, asft, prob, nft, grpo, psft, eaft, pear, chord)}
# each learner's hyper-parameters become flags of bin/train (--clip-eps, ...)
LEARNER_CONFIGS = tuple(learner.config for learner in LEARNERS.values())
