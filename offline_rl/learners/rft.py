"""RFT: rejection-sampling fine-tuning, NLL on the policy's own accepted samples.

Yuan et al., "Scaling Relationship on Learning Mathematical Reasoning with Large
Language Models" (arXiv 2308.01825). Samples whose verified reward is 1 are kept
and trained on with plain maximum likelihood: SFT's loss (``sft.loss``) on the accepted view only.
"""

from __future__ import annotations

from dataclasses import dataclass

from offline_rl.learner import Learner
from offline_rl.learners import sft


@dataclass
class RFTConfig:
    pass  # no hyper-parameters of its own


Config = RFTConfig

LEARNER = Learner("rft", RFTConfig, views=("accepted",), loss=sft.loss, token_grad=sft.token_grad)
