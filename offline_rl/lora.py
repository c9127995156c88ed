"""LoRA adapters through PEFT, for every learner: checked, attached, used as the frozen reference, saved.

``--lora-rank R`` freezes the model and trains low-rank adapters on its linear layers (default: every one but the
output head, i.e. the attention and MLP projections): ``W x + (alpha / R) B A x`` with ``A`` random and ``B`` zero,
so the policy starts as the model itself (Hu et al., arXiv 2106.09685). ``--lora-train-embeddings`` trains the
input embeddings and the output head in full beside them (tied ones stay tied).

- **A fresh adapter on ``--model`` in every run.** So "the adapter disabled" is exactly this run's initial model
  at every step, resumed or not, and a learner's frozen reference (DPO's reference pass, ASFT's base when it is
  the initial model) is the training model with its adapter off (:class:`AdapterOff`): no second copy in memory.
  ``--init-from`` a LoRA run's last checkpoint continues its schedule and RNG on ``--model`` = that run's merged
  model (what bin/iterate's rounds do): the adapter it trained is merged in those weights, so the new run's adapter
  starts fresh (and its optimizer moments at zero). An anchor that differs from ``--model`` (``--base-model``, as
  in bin/iterate's later rounds) is loaded apart, as without LoRA.
- **The frozen weights in the run's precision.** Under ``--precision bf16|fp16`` they are held in that dtype (half
  the memory of float32); the adapters (and trained embeddings) stay float32, as do the optimizer's moments.
- **Checkpoints hold what is trained** (adapters, embeddings): the frozen weights are ``--model``'s.
- **The final model** is the adapter in ``OUT/adapter`` (PEFT's format) and the weights merged, ``W + (alpha / R)
  B A`` in float32, as an ordinary Hugging Face checkpoint in ``OUT`` that bin/eval, vLLM and the next round load.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch

from rollout.runtime import UsageError

ALL_LINEAR = "all-linear"  # PEFT's word: every linear layer but the output head


def used(cfg) -> bool:
    return bool(getattr(cfg, "lora_rank", 0))


def check_settings(cfg) -> None:
    """One line for a LoRA setting given without ``--lora-rank``."""
    if used(cfg):
        return
    given = [name for name, off in (("lora_alpha", None), ("lora_dropout", 0.0), ("lora_target_modules", ALL_LINEAR),
                                    ("lora_train_embeddings", False)) if getattr(cfg, name) != off]
    if given:
        raise UsageError(f"--{given[0].replace('_', '-')} sets a LoRA adapter: give --lora-rank too "
                         "(0: full fine-tuning)")


def peft_config(cfg, model):
    """PEFT's LoraConfig of these settings for ``model`` (its embedding and head modules named from the model)."""
    from peft import LoraConfig

    targets = cfg.lora_target_modules
    targets = targets if targets == ALL_LINEAR else [t.strip() for t in targets.split(",") if t.strip()]
    saved = None
    if cfg.lora_train_embeddings:
        names = {module: name for name, module in model.named_modules()}
        saved = [names[model.get_input_embeddings()].split(".")[-1],
                 names[model.get_output_embeddings()].split(".")[-1]]
    return LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha or 2.0 * cfg.lora_rank, lora_dropout=cfg.lora_dropout,
                      target_modules=targets, modules_to_save=saved, task_type="CAUSAL_LM",
                      ensure_weight_tying=bool(saved) and bool(getattr(model.config, "tie_word_embeddings", False)))


def check_model(cfg, model_path: str) -> None:
    """One line, before any weight is read, if the adapters cannot be put on this model: a target module it does
    not have, or one that is not a linear layer (the model built on the meta device: no memory, no weights)."""
    from peft import get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_path))
    head = model.get_output_embeddings()
    linear = sorted({name.split(".")[-1] for name, module in model.named_modules()
                     if isinstance(module, torch.nn.Linear) and module is not head})
    where = f"--lora-target-modules {cfg.lora_target_modules}"
    names = {name.split(".")[-1] for name, _ in model.named_modules()}
    missing = [t for t in cfg.lora_target_modules.split(",") if t.strip() != ALL_LINEAR and t.strip() not in names]
    if missing:  # PEFT adapts what matches and ignores the rest: each name must be there
        raise UsageError(f"{where}: {Path(model_path).name} has no such module {missing[0].strip()!r}; its linear "
                         f"layers: {', '.join(linear) or 'none'}")
    try:
        adapted = get_peft_model(model, peft_config(cfg, model))
    except (ValueError, KeyError) as e:
        raise UsageError(f"{where}: {Path(model_path).name} has no such module ({str(e).splitlines()[0]}); "
                         f"its linear layers: {', '.join(linear) or 'none'}") from None
    from peft.tuners.lora import Linear as LoraLinear
    from peft.tuners.lora import LoraLayer

    others = sorted({name.split(".")[-1] for name, module in adapted.named_modules()
                     if isinstance(module, LoraLayer) and not isinstance(module, LoraLinear)})
    if others:
        raise UsageError(f"{where}: {', '.join(others)} is not a linear layer; adapt linear layers "
                         f"({', '.join(linear)}) and train embeddings and head with --lora-train-embeddings")


def attach(model, cfg):
    """``model`` frozen, with fresh adapters (float32) on the layers ``cfg`` names: a PeftModel that starts as
    ``model`` exactly (B = 0)."""
    from peft import get_peft_model

    adapted = get_peft_model(model, peft_config(cfg, model))
    for param in adapted.parameters():
        if param.requires_grad:
            param.data = param.data.float()
    return adapted


def hold_frozen_in(model, dtype: torch.dtype) -> None:
    """The frozen weights cast to ``dtype`` (the trained ones stay float32)."""
    for param in model.parameters():
        if not param.requires_grad and param.is_floating_point():
            param.data = param.data.to(dtype)


def is_adapted(model) -> bool:
    from peft import PeftModel

    return isinstance(getattr(model, "module", model), PeftModel)


def trainable_names(model) -> set[str]:
    """The names of the trained parameters in ``model``'s state dict (a tied pair under its first name only)."""
    return {name for name, param in model.named_parameters() if param.requires_grad}


def keep_trained_in_checkpoints(accelerator, model) -> None:
    """accelerate's checkpoints of ``model`` (prepared, unsharded) hold its trained parameters only, and load them
    back checking that nothing else is missing: the frozen weights are ``--model``'s."""
    from safetensors.torch import load_file

    names = trainable_names(model)

    def save_hook(models, weights, _directory):
        for i, state in enumerate(weights):
            if models[i] is model:
                weights[i] = {k: v for k, v in state.items() if k in names}

    def load_hook(models, directory):
        if model not in models:
            return
        state = load_file(str(Path(directory) / "model.safetensors"), device=str(next(model.parameters()).device))
        missing, unexpected = model.load_state_dict(state, strict=False)
        absent = sorted(names & set(missing))
        if unexpected or absent:
            raise UsageError(f"{directory} does not hold this run's adapter "
                             f"({(unexpected or absent)[0]} {'unexpected' if unexpected else 'missing'})")
        models.remove(model)  # loaded: accelerate skips it

    accelerator.register_save_state_pre_hook(save_hook)
    accelerator.register_load_state_pre_hook(load_hook)


class AdapterOff:
    """The training model with its adapter disabled: the frozen initial model, no second copy in memory. Called like
    a model (under ``torch.no_grad``); its output head is the frozen one (with --lora-train-embeddings, not the
    trained copy)."""

    def __init__(self, model):
        self.model = getattr(model, "module", model)  # the PeftModel (a DDP wrapper's module)

    def __call__(self, **inputs):
        with self.model.disable_adapter():
            return self.model(**inputs)

    @property
    def config(self):
        return self.model.config

    def get_output_embeddings(self):
        head = self.model.get_output_embeddings()
        return getattr(head, "original_module", head)  # PEFT's wrapper of a trained head keeps the frozen one


@contextlib.contextmanager
def frozen(model):
    """The LoRA model as its frozen initial model for a pass outside training: adapter off, eval mode (no dropout),
    no gradient."""
    peft_model = getattr(model, "module", model)
    training = peft_model.training
    peft_model.eval()
    try:
        with torch.no_grad():
            yield AdapterOff(peft_model)
    finally:
        peft_model.train(training)


def merged_state_dict(state: dict[str, torch.Tensor], scaling: float, tied: dict[str, str]) -> dict[str, torch.Tensor]:
    """A PeftModel's whole state dict (frozen weights and adapters, under PEFT's names) as the plain model's: each
    adapted weight ``W + scaling * B A`` in float32, a trained embedding or head by its trained copy, tied keys once
    (``tied``: the model's tied key -> the key it shares)."""
    prefix, merged = "base_model.model.", {}
    for key, value in state.items():
        name = key.removeprefix(prefix)
        if ".lora_A." in name or ".lora_B." in name or ".original_module." in name:
            continue
        if ".base_layer." in name:
            module, param = name.split(".base_layer.")
            if param == "weight":
                a = state[f"{prefix}{module}.lora_A.default.weight"].float()  # [R, in]
                b = state[f"{prefix}{module}.lora_B.default.weight"].float()  # [out, R]
                value = value.float() + scaling * (b @ a)  # [out, in]
            merged[f"{module}.{param}"] = value.float()
        else:
            merged[name.replace(".modules_to_save.default.", ".")] = value.float()
    for key in tied:
        merged.pop(key, None)
    return merged


def save(peft_model, state: dict[str, torch.Tensor], out: Path) -> dict[str, torch.Tensor]:
    """The adapter in ``out/adapter`` (PEFT's format, from ``state``: the whole model's state dict, gathered if
    sharded); returns the merged weights, for the Hugging Face checkpoint in ``out``."""
    from peft.utils import get_peft_model_state_dict

    config = peft_model.peft_config["default"]
    adapter = get_peft_model_state_dict(peft_model, state_dict=state, save_embedding_layers=False)
    (out / "adapter").mkdir(parents=True, exist_ok=True)
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in _untied(adapter).items()},
              str(out / "adapter" / "adapter_model.safetensors"))
    config.save_pretrained(str(out / "adapter"))
    tied = getattr(peft_model.get_base_model(), "all_tied_weights_keys", None) or {}
    return merged_state_dict(state, config.lora_alpha / config.r, tied)


def _untied(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Tensors sharing storage (a tied embedding and head) stored once each, as safetensors requires."""
    seen: dict[int, str] = {}
    out = {}
    for key, value in state.items():
        if value.data_ptr() in seen:
            out[key] = value.clone()
        else:
            seen[value.data_ptr()] = key
            out[key] = value
    return out
