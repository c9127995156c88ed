"""FSDP2 training: torch's ``fully_shard`` behind accelerate's own switch, on any device.

``accelerate launch --config_file configs/accelerate/fsdp.yaml`` (or ``fsdp-cpu.yaml``) sets
``ACCELERATE_USE_FSDP=true`` and ``FSDP_*`` variables in every process. accelerate itself shards only on
accelerators (on CPU it runs such a job as plain DDP over gloo, nothing sharded), so the trainer applies
``fully_shard`` itself, the same way on every device: each decoder layer is one unit and the root (embeddings,
final norm, lm_head) another; the accelerator is built as for DDP and never wraps the model. The parameters,
their gradients and the optimizer's moments are DTensors sharded over the ranks.

The root unit stays gathered from its forward until its backward (FSDP2 does not reshard the root after
forward), so the chunked and fused projections, which call ``lm_head`` after the model's forward, read its whole
weight and their gradients reach FSDP's reduce-scatter; :func:`gathered_weight` refuses a weight that is still
a shard instead of projecting with it.

Checkpoints are torch.distributed.checkpoint (DCP) directories, sharded as trained (``OUT/checkpoints/step-N/
sharded``); the final model is gathered into one Hugging Face checkpoint on the main process.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from rollout.runtime import UsageError

SHARDED_DIR = "sharded"  # a checkpoint's DCP directory (model and optimizer), beside accelerate's own files


@dataclass(frozen=True)
class Sharding:
    """What ``accelerate launch`` asked for, read from its environment."""

    layer_classes: tuple[str, ...]  # module classes each made a unit (default: the model's ``_no_split_modules``)
    reshard_after_forward: bool
    offload: bool  # parameters and moments kept in host memory between uses (CPUOffloadPolicy)


def requested() -> Sharding | None:
    """The FSDP settings ``accelerate launch`` exported, or None without them; one line for what we cannot run."""
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() != "true":
        return None
    if os.environ.get("FSDP_VERSION", "1") != "2":
        raise UsageError("FSDP: set fsdp_version: 2 in the accelerate config (bin/train shards with FSDP2 only)")
    policy = os.environ.get("FSDP_AUTO_WRAP_POLICY", "TRANSFORMER_BASED_WRAP")
    if policy not in ("TRANSFORMER_BASED_WRAP", ""):
        raise UsageError(f"FSDP: fsdp_auto_wrap_policy {policy} is not supported; use TRANSFORMER_BASED_WRAP "
                         "(each decoder layer a unit)")
    classes = tuple(c.strip() for c in os.environ.get("FSDP_TRANSFORMER_CLS_TO_WRAP", "").split(",") if c.strip())
    return Sharding(classes, os.environ.get("FSDP_RESHARD_AFTER_FORWARD", "true").lower() == "true",
                    os.environ.get("FSDP_OFFLOAD_PARAMS", "false").lower() == "true")


def load_whole_on_every_rank() -> None:
    """transformers reads a checkpoint on every rank from now on: under accelerate's fsdp_cpu_ram_efficient_loading
    it would leave zeros on all but each node's first rank (for accelerate's own FSDP to broadcast), which a DPO
    reference model, scored on every rank, cannot have. :func:`shard` broadcasts rank 0's weights all the same."""
    os.environ["FSDP_CPU_RAM_EFFICIENT_LOADING"] = "false"


@contextlib.contextmanager
def accelerate_unsharded():
    """accelerate's state built as for DDP (on an accelerator it would otherwise wrap the model in its own FSDP)."""
    saved = os.environ.get("ACCELERATE_USE_FSDP")
    os.environ["ACCELERATE_USE_FSDP"] = "false"
    try:
        yield
    finally:
        if saved is None:
            del os.environ["ACCELERATE_USE_FSDP"]
        else:
            os.environ["ACCELERATE_USE_FSDP"] = saved


def shard(model: torch.nn.Module, sharding: Sharding, device: torch.device) -> torch.nn.Module:
    """``fully_shard`` over every decoder layer, then the root; one line if no layer matches the classes named."""
    from torch.distributed.fsdp import CPUOffloadPolicy, OffloadPolicy, fully_shard

    names = set(sharding.layer_classes or getattr(model, "_no_split_modules", None) or ())
    layers = [m for m in model.modules() if type(m).__name__ in names]
    if not layers:
        raise UsageError(f"FSDP: no module of class {', '.join(sorted(names)) or '(none named)'} in "
                         f"{type(model).__name__}; set fsdp_transformer_layer_cls_to_wrap to its decoder layer")
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    model.to(device)
    # rank 0's weights, for every rank, whatever each rank read
    whole = {k: v.clone() for k, v in model.state_dict().items()} if torch.distributed.get_rank() == 0 else {}
    offload = CPUOffloadPolicy() if sharding.offload else OffloadPolicy()
    for layer in layers:
        fully_shard(layer, reshard_after_forward=sharding.reshard_after_forward, offload_policy=offload)
    # the root (embeddings, final norm, lm_head) stays gathered from its forward to its backward, as FSDP2 keeps a
    # root by default: the projections use lm_head after the forward
    fully_shard(model, reshard_after_forward=False, offload_policy=offload)
    set_model_state_dict(model, whole, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))
    return model


def is_sharded(model) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def gathered_weight(weight: torch.Tensor) -> torch.Tensor:
    """A weight about to be used outside the model's forward, checked to be whole (not one rank's shard)."""
    from torch.distributed.tensor import DTensor

    if isinstance(weight, DTensor):
        raise RuntimeError("the lm_head weight is still sharded after the model's forward (its FSDP unit "
                           "resharded): the projection cannot use a shard")
    return weight


def clip_grad_norm(model, max_norm: float) -> torch.Tensor:
    """The total gradient norm over every rank's shards (a plain tensor), gradients clipped to ``max_norm``."""
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    return norm.full_tensor() if hasattr(norm, "full_tensor") else norm


def full_state_dict(model) -> dict[str, torch.Tensor]:
    """The whole model's weights on the main process, in host memory (collective: every rank calls it)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    whole = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    for tied in getattr(model, "all_tied_weights_keys", None) or {}:  # gathered apart: saved once, as unsharded
        whole.pop(tied, None)
    return whole


def save(model, optimizer, directory: Path) -> None:
    """Model and optimizer as sharded (DCP) files, each rank writing its own shards (collective)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_state, optimizer_state = get_state_dict(model, optimizer, options=_trained_only(model))
    dcp.save({"model": model_state, "optimizer": optimizer_state}, checkpoint_id=str(directory / SHARDED_DIR))


def load(model, optimizer, directory: Path) -> None:
    """Model and optimizer from :func:`save`'s files, resharded to this run's ranks if they differ (collective)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    options = _trained_only(model)
    model_state, optimizer_state = get_state_dict(model, optimizer, options=options)
    state = {"model": model_state, "optimizer": optimizer_state}
    dcp.load(state, checkpoint_id=str(directory / SHARDED_DIR))  # every key asked for, or an error
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"],
                   options=options)


def _trained_only(model):
    """A LoRA model's checkpoints hold its trained parameters only (the frozen ones are --model's): saved and loaded
    without the frozen ones, which loading then does not ask for."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    frozen = any(not p.requires_grad for p in model.parameters())
    return StateDictOptions(ignore_frozen_params=frozen, strict=not frozen)


def checkpoint_is_sharded(directory: Path) -> bool:
    return (directory / SHARDED_DIR).is_dir()
