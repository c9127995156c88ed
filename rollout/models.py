"""Model lookup: a local checkpoint or a hub name, its tokenizer, and what the toolkit records of itself."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from rollout.runtime import UsageError


def resolve_model(model: str) -> str:
    """A local checkpoint directory, or a hub name found in the local cache or on a reachable hub."""
    path = Path(model).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise UsageError(f"{path} is not a model checkpoint (no config.json)")
        return str(path)
    if re.fullmatch(r"[\w.-]+/[\w.-]+", model) and not model.startswith("."):
        return _hub_model(model)
    raise UsageError(f"model not found: {model}")


def _hub_model(name: str) -> str:
    """A hub name, once it is known to be loadable: cached locally, or the hub answers (checked once,
    in seconds, rather than after the hub client's retries: 23 s measured with no network)."""
    import os
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants, snapshot_download

    try:
        snapshot_download(name, local_files_only=True)
        return name
    except Exception:  # not cached (or cached only in part): the hub must have it
        pass
    not_local = f"model {name} is neither a local directory nor in the Hugging Face cache"
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        raise UsageError(f"{not_local}, and HF_HUB_OFFLINE is set")
    host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=5).close()
    except OSError as e:
        raise UsageError(f"{not_local}, and the hub ({host}) cannot be reached: {e.strerror or e}") from None
    return name


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                              text=True, timeout=5).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def toolkit_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("offline-rl")
    except PackageNotFoundError:
        return "unknown"


def load_tokenizer(model: str):
    """The model's tokenizer, checking on the way that the checkpoint loads at all."""
    from transformers import AutoConfig, AutoTokenizer

    try:
        AutoConfig.from_pretrained(model)
        return AutoTokenizer.from_pretrained(model)
    except Exception as e:  # transformers raises OSError, ValueError, JSONDecodeError, KeyError...
        raise UsageError(f"cannot load model {model}: {(str(e).splitlines() or [type(e).__name__])[0]}") from None
