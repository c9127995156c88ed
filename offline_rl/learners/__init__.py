"""The learners. Each is one module with ``Config``, ``examples(dataset, context)`` and
``loss(logprobs, batch, cfg) -> (loss_sum, n_tokens, metrics)``; ``--learner NAME`` picks one here."""

from offline_rl.learners import dft, rft, sft

LEARNERS = {"sft": sft, "rft": rft, "dft": dft}
