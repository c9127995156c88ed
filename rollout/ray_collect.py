"""``bin/collect --ray-address``: the data-parallel ranks as Ray tasks, anywhere on a cluster.

Each rank is one task running :func:`rollout.collect.run_collect` on its ``--shard`` into ``OUT/dp-I``, with
its own engine on its own GPUs (``num_gpus`` = the tensor-parallel size; on a cluster without GPUs, an equal share
of its CPUs). A task's worker runs that task only (``max_calls=1``): its locks and accelerator memory go with it.
A worker that dies (a killed process, a lost node) has its task retried by Ray; the retry resumes ``OUT/dp-I``
from its last complete parquet shard, as a rerun of bin/collect would, so no row is lost or written twice.

Chosen over ``ray.data.llm``: its processor hands back text (and vLLM's output fields) per row of a Ray Dataset,
but not our per-prompt seeds, stored behaviour log-probs with their sampling manifest, or resumable shard files;
here Ray only places and retries the ranks, and every rank is bin/collect itself.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Callable

from rollout.runtime import CommandFailed, UsageError

RETRIES = 3  # times Ray restarts a rank whose worker died
CONNECT_TIMEOUT_S = 5.0  # a cluster's address answers within this, or is refused before anything is written


def check_address(address: str) -> None:
    """One line unless ``address`` (``auto``, ``HOST:PORT`` or ``ray://HOST:PORT``; ``local`` is started here)
    names a cluster that accepts a connection within :data:`CONNECT_TIMEOUT_S` seconds: ``ray.init`` itself waits
    minutes for an address that does not answer, logging as it waits."""
    if address == "local":
        return
    target = address.removeprefix("ray://")
    if address.startswith("ray://"):  # Ray Client's server, 10001 unless named
        target = target if re.search(r":\d+$", target) else target + ":10001"
    else:  # the GCS address ray.init connects to (auto: RAY_ADDRESS or the last cluster started here; localhost as
        from ray._private import services  # this node's address)

        try:
            target = services.canonicalize_bootstrap_address(address)
        except ConnectionError as e:
            raise UsageError(f"--ray-address {address}: {str(e).splitlines()[0]}") from None
        except ValueError:
            target = ""
    m = re.fullmatch(r"\[?([^\[\]/]+?)\]?:(\d+)", target or "")
    if m is None:
        raise UsageError(f"--ray-address {address!r} is not local, auto, HOST:PORT or ray://HOST:PORT")
    host, port = m[1], int(m[2])
    try:
        socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as e:
        reason = (f"no answer within {CONNECT_TIMEOUT_S:g} s" if isinstance(e, TimeoutError)
                  else (e.strerror or str(e) or type(e).__name__).lower())
        raise UsageError(f"--ray-address {address}: no Ray cluster at {host}:{port} ({reason}); start one with "
                         "ray start --head, or name its address") from None


def run_ranks(address: str, collect: Callable, ranks: list, context) -> None:
    """Every rank's ``collect(rank, context=context)`` (bin/collect's own) as a Ray task on the
    cluster at ``address`` (``local``: one started here and stopped at the end); one line for a rank that failed
    on its input, or whose worker died past its retries."""
    import ray

    local = address == "local"
    log_level = os.environ.get("RAY_LOGGER_LEVEL", "info")  # Ray's own lines: errors only unless --verbose
    try:
        if local:  # a cluster of this machine only, bound to the loopback address
            ray.init(address="local", _node_ip_address="127.0.0.1", include_dashboard=False,
                     num_cpus=os.cpu_count(), log_to_driver=True, logging_level=log_level,
                     runtime_env={"env_vars": passed_environment()})
        else:
            ray.init(address=address, log_to_driver=True, logging_level=log_level,
                     runtime_env={"env_vars": passed_environment()})
    except (ConnectionError, ValueError, RuntimeError) as e:
        raise UsageError(f"--ray-address {address}: "
                         f"cannot connect ({str(e).splitlines()[0] if str(e) else e})") from None
    try:
        resources = ray.cluster_resources()
        tp = ranks[0].tensor_parallel_size
        if resources.get("GPU", 0) >= tp:
            options = {"num_gpus": tp, "num_cpus": 1}
        else:  # a CPU cluster: its cores shared out between the ranks
            options = {"num_gpus": 0, "num_cpus": max(1, int(resources.get("CPU", 1)) // len(ranks))}
        task = ray.remote(max_retries=RETRIES, max_calls=1, **options)(_collect_rank)
        pending = {task.remote(collect, rank, context): rank.shard for rank in ranks}
        for ref, shard in pending.items():
            try:
                ray.get(ref)
            except ray.exceptions.RayTaskError as e:
                cause = e.cause if isinstance(e.cause, Exception) else None
                if isinstance(cause, UsageError):
                    raise UsageError(f"rank {shard}: {cause}") from None
                raise CommandFailed(f"rank {shard} failed: {str(e).strip().splitlines()[-1]}; rerun the same "
                                    "command to resume") from None
            except (ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError) as e:
                raise CommandFailed(f"rank {shard}: its worker died {RETRIES + 1} times ({type(e).__name__}); "
                                    "rerun the same command to resume") from None
    finally:
        ray.shutdown()


def passed_environment() -> dict[str, str]:
    """This process's settings the ranks need wherever they run: ours (OFFLINE_RL_*), vLLM's, the hub's."""
    return {k: v for k, v in os.environ.items() if k.startswith(("OFFLINE_RL_", "VLLM_", "HF_", "TOKENIZERS_"))}


def _collect_rank(collect: Callable, cfg, context) -> None:
    collect(cfg, context=context)
