"""Rule-based math rewards: answer extraction and equivalence. Imports neither rollout nor offline_rl."""

from rewards.extract import extract_boxed
from rewards.verify import VERIFIER_VERSION, equivalent, extract_answer, score

__all__ = ["VERIFIER_VERSION", "equivalent", "extract_answer", "extract_boxed", "score"]
