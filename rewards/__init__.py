"""Rule-based math rewards: answer extraction, gold normalisation, equivalence, parallel scoring.

Public API: ``score``, ``score_batch``, ``extract_answer``, ``equivalent``, ``gold_answer``,
``VERIFIER_VERSION``. Imports neither rollout nor offline_rl, nor vLLM or torch.
"""

from rewards.batch import (
                           DEFAULT_DEADLINE_SECONDS,
                           BatchResult,
                           StreamScorer,
                           equivalent,
                           score,
                           score_batch,
                           score_batch_detailed,
)
from rewards.extract import DEFAULT_EXTRACTION, DEFAULT_FALLBACKS, EXTRACTIONS, FALLBACKS, extract_answer, extract_boxed
from rewards.normalize import gold_answer, normalize_answer
from rewards.verify import VERIFIER_VERSION

__all__ = ["DEFAULT_DEADLINE_SECONDS", "DEFAULT_EXTRACTION", "DEFAULT_FALLBACKS", "EXTRACTIONS", "FALLBACKS",
           "VERIFIER_VERSION", "BatchResult", "StreamScorer", "equivalent", "extract_answer", "extract_boxed",
           "gold_answer", "normalize_answer", "score", "score_batch", "score_batch_detailed"]
