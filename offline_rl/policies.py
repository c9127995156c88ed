"""The policies a learner's maths refers to besides the one it trains, in one place.

- **The behaviour policy** that sampled the data. A learner that divides by it (``ppo``, ``grpo``, ``nft``,
  ``iwsft``, ``adft``; DPO's ``--reference behavior``) is exact only for a temperature T at which
  ``log softmax(logits / T)`` of its initial model equals the stored log-probs. :func:`ratio_temperature` decides
  that T from every dataset's manifest (the sampling model, the sampling settings, how the log-probs were
  computed, merged inputs), or refuses with one line naming why not. Train, iterate, compare and DPO's reference
  all ask it, through :func:`check_learner` or directly. Demonstrations have no behaviour policy, unless a model
  scored them (``bin/rescore --logprobs-model M`` stores M's log-probs at temperature 1 and records it in the
  manifest, ``scored_logprobs``; ``offline_rl.inspection.score_logprobs``): then M is their behaviour policy, at
  T = 1.
- **Frozen reference models** (DPO's reference pass, ASFT's anchor, the sampling model a ratio learner's mismatch
  correction recomputes: :func:`sampling_model`): the training model itself where it is that model (before its first
  step: :func:`initial_model`; under LoRA, with its adapter off, at any step: ``offline_rl.lora``), else loaded by
  :func:`frozen_model` only.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch

from rollout.runtime import UsageError
from rollout.sampling import PENALTIES, TRUNCATIONS, non_neutral


def check_learner(learner, manifests: dict[str, dict], dataset, model_path: str, approximate: bool) -> float | None:
    """The temperature at which ``learner``'s ratio to the behaviour policy is exact for these datasets (None: it
    divides by no behaviour policy); one line (UsageError) where none is."""
    if not learner.behavior_ratio:
        return None
    require_samples(learner.name, manifests)
    temperature = ratio_temperature(manifests, model_path, learner.name, approximate)
    require_behavior_logprobs(dataset, learner.name)
    return temperature


def require_samples(learner: str, manifests: dict[str, dict]) -> None:
    """Demonstrations were sampled by no policy: nothing to divide by, unless a model scored them."""
    for path, manifest in manifests.items():
        if manifest.get("kind") == "demonstrations" and not manifest.get("scored_logprobs"):
            raise UsageError(f"{learner} needs the sampling policy's log-probs, and {path} holds demonstrations, "
                             "which have none; train sft, dft, rft or prob on them, give sampled data, or store a "
                             "model's log-probs for them first (bin/rescore --logprobs-model)")


def require_behavior_logprobs(dataset, learner: str) -> None:
    """Learners that weigh by pi_theta / pi_behaviour cannot run on rows collected without log-probs."""
    if any(not lp for lp in dataset["behavior_logprobs"]):
        raise UsageError(f"{learner} needs the sampling policy's log-probs; this dataset has rows without them "
                         "(demonstrations, or samples collected without them)")


def check_logprobs_mode(path: str, manifest: dict, temperature: float, learner: str) -> None:
    """The stored log-probs are those of the distribution sampled from where the engine declared
    ``processed_logprobs`` (vLLM's and transformers' always; a server's only as declared at collection), with
    ``raw_logprobs`` the same distribution at temperature 1 only. A manifest older than the record says what its
    engine declares without flags (``backend`` absent: vLLM, the only engine then). Refused otherwise, even with
    --approximate-ratios: a ratio to log-probs of unknown processing is not an approximation of anything."""
    from rollout.engines import ENGINES

    engine = ENGINES.get(manifest.get("backend") or "vllm")
    mode = manifest.get("logprobs_mode") or (engine.logprobs_mode(None) if engine is not None else None)
    if mode == "processed_logprobs" or (mode == "raw_logprobs" and temperature == 1.0):
        return
    if mode is None:
        raise UsageError(f"{learner}: {path} does not say how its behaviour log-probs were computed (a server "
                         "sampled it); collect with --server-logprobs-mode as the server runs, e.g. processed_logprobs")
    raise UsageError(f"{learner}: {path} holds {mode} at temperature {temperature:g}, not the log-probs of the "
                     "distribution sampled from; serve with --logprobs-mode processed_logprobs")


def ratio_temperature(manifests: dict[str, dict], model_path: str, learner: str, approximate: bool) -> float:
    """The temperature T at which ``log softmax(logits / T)`` of the sampling model equals the stored
    behaviour log-probs, checked on every dataset's manifest; refused (one line) where no T makes the
    ratio exact: truncation (top-p, top-k, min-p), penalties (repetition, presence, frequency), another sampling
    model, unknown or mixed settings. A sampling parameter a manifest does not record reads as neutral (older
    manifests recorded only what could be set). ``approximate`` accepts truncation and another model knowingly
    (the ratio is then only approximate), never penalties."""
    def same_model(a, b) -> bool:
        return a == b or (Path(str(a)).exists() and Path(str(a)).resolve() == Path(str(b)).resolve())

    temperatures = set()
    for path, manifest in manifests.items():
        scored = manifest.get("scored_logprobs")
        if manifest.get("kind") == "demonstrations" and isinstance(scored, dict):  # a model's log-probs at T = 1
            if not approximate and not same_model(scored.get("model"), model_path):
                raise UsageError(f"{learner}: {path} holds the log-probs of {scored.get('model')}, not of the initial "
                                 f"model {model_path}; --approximate-ratios to run anyway")
            temperatures.add(float(scored.get("temperature", 1.0)))
            continue
        sampling = manifest.get("sampling")
        if not isinstance(sampling, dict) or not isinstance(sampling.get("temperature"), int | float):
            raise UsageError(f"{learner}: {path} does not record the temperature it was sampled at; "
                             "its behaviour log-probs cannot be matched")
        identity = manifest.get("identity", {})
        for appended in manifest.get("appended_identities", []):
            if appended.get("sampling") != identity.get("sampling") or appended.get("model") != identity.get("model"):
                raise UsageError(f"{learner}: {path} holds rows sampled with other settings (a forced append); "
                                 "its behaviour log-probs are not of one policy")
        penalties = non_neutral(sampling, PENALTIES)
        if penalties:  # the model's logits moved by what each sequence holds: at no temperature its distribution
            raise UsageError(f"{learner}: {path} was sampled with {_settings(penalties)}: its behaviour log-probs "
                             "are of a penalised distribution, not the model's at any temperature; ratio learners "
                             "need samples without penalties")
        truncations = non_neutral(sampling, TRUNCATIONS)
        if not approximate:
            if truncations:
                raise UsageError(f"{learner}: {path} was sampled with {_settings(truncations)}: a ratio to a "
                                 "truncated distribution is not exact; --approximate-ratios to run anyway")
            if not same_model(manifest.get("model"), model_path):
                raise UsageError(f"{learner}: {path} was sampled by {manifest.get('model')}, not by the initial model "
                                 f"{model_path}; --approximate-ratios to run anyway")
        check_logprobs_mode(path, manifest, float(sampling["temperature"]), learner)
        temperatures.add(float(sampling["temperature"]))
    if len(temperatures) > 1:
        raise UsageError(f"{learner}: the datasets were sampled at different temperatures "
                         f"({', '.join(map(str, sorted(temperatures)))}); train on one at a time")
    temperature = temperatures.pop()
    if temperature <= 0:
        raise UsageError(f"{learner}: greedy samples (temperature 0) have no behaviour probabilities to divide by")
    return temperature


def _settings(parameters: dict) -> str:
    """``{"top_p": 0.9, "repetition_penalty": 1.05}`` as ``top-p 0.9, repetition penalty 1.05``."""
    names = {"top_p": "top-p", "top_k": "top-k", "min_p": "min-p"}
    return ", ".join(f"{names.get(name, name.replace('_', ' '))} {value}" for name, value in parameters.items())


def sampling_model(manifests: dict[str, dict], learner: str) -> str:
    """The one model whose log-probs every dataset stores (the sampling model, or the model that scored
    demonstrations), resolved: what a mismatch correction recomputes; one line if the datasets name several, or
    it is not at hand."""
    from rollout.models import resolve_model

    named = {(m.get("scored_logprobs") or {}).get("model") or m.get("model") for m in manifests.values()}
    if len(named) != 1 or None in named:
        raise UsageError(f"{learner} --mismatch-correction recomputes the model that sampled the data, and the "
                         f"datasets name {', '.join(sorted(map(str, named)))}: train on one model's samples")
    return resolve_model(named.pop())


def frozen_model(model_path: str, device) -> torch.nn.Module:
    """The model at ``model_path``, frozen, in float32 on ``device``, whole (on every rank): the one way a reference
    (DPO's initial model, ASFT's anchor) is loaded."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).to(device).eval()
    model.requires_grad_(False)
    model.config.use_cache = False
    return model


@contextlib.contextmanager
def loaded_frozen(model_path: str, device):
    """:func:`frozen_model` for one pass, freed after it."""
    model = frozen_model(model_path, device)
    try:
        yield model
    finally:
        del model


@contextlib.contextmanager
def initial_model(model):
    """The training model, before its first step, as the frozen initial model for a pass outside training (DPO's
    reference): eval mode, no gradient; a LoRA model with its adapter off (which it is at every step). No second
    copy in memory."""
    from offline_rl import lora

    if lora.is_adapted(model):
        with lora.frozen(model) as frozen:
            yield frozen
        return
    training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield model
    finally:
        model.train(training)
