"""Parallel scoring over worker processes, with a hard wall-clock deadline per item.

The parent extracts each answer (linear-time string work) and hands (answer, gold) pairs to
a pool of worker processes, one pair at a time. A worker that has not answered within the
deadline is killed (SIGKILL) and replaced; its item scores 0.0 and is counted as timed out.
The deadline is enforced from outside the worker, so neither a stuck sympy call, a C-level
loop nor a thread without ``signal.alarm`` can hold the batch.

Workers come from a ``forkserver`` that has already imported math-verify and sympy and parsed once, so a
replacement is a fork, not a fresh interpreter. The pool is kept between calls.
"""

from __future__ import annotations

import atexit
import contextlib
import multiprocessing
import os
import signal
import sys
import threading
import time
import types
from collections import deque
from dataclasses import dataclass, field
from multiprocessing.connection import wait

from rewards.extract import DEFAULT_FALLBACKS, extract_answer
from rewards.normalize import normalize_answer
from rewards.verify import STAGE_TIMEOUT_SECONDS, extraction_fallbacks, in_main_thread, quick_verdict, verify_response
from rewards.verify import equivalent as equivalent_here

DEFAULT_DEADLINE_SECONDS = 2.0
# A worker's address-space cap: a 9^9^9-sized integer fails with MemoryError instead of swapping the host.
WORKER_MEMORY_BYTES = 4 * 1024**3
# This many workers dying before they could score anything means the pool cannot start at all.
MAX_FAILED_STARTS = 8
# Items queued in each worker: two hide the round trip to the parent; more would only delay the rest after a kill.
PIPELINE_DEPTH = 2


@dataclass
class BatchResult:
    """What ``score_batch`` computed, item by item."""

    preds: list[str]
    rewards: list[float]
    # wall time per item: from the worker's start on it to its answer or kill; for items that string
    # checks settle in the parent (no worker needed), the time of those checks
    seconds: list[float]
    timed_out: list[int] = field(default_factory=list)  # indices killed on the deadline
    crashed: list[int] = field(default_factory=list)  # indices whose worker died on its own (e.g. out of memory)


def _worker_main(conn, stage_timeout: int) -> None:
    """Score (index, answer, gold) messages until the parent closes the pipe."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    try:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (WORKER_MEMORY_BYTES, WORKER_MEMORY_BYTES))
    except (ImportError, ValueError, OSError):
        pass
    equivalent("1", "1.0", timeout_seconds=stage_timeout)  # warm the parser before saying ready
    try:
        conn.send("ready")
        while (message := conn.recv()) is not None:
            index, text, gold, whole_response = message
            if whole_response:  # the math-verify mode: it finds the answer in the response itself
                conn.send((index, *verify_response(text, gold, timeout_seconds=stage_timeout)))
            else:
                conn.send((index, equivalent_here(text, gold, timeout_seconds=stage_timeout), None))
    except (EOFError, OSError):  # the parent is gone (killed, or exited without closing us): so are we
        return


@contextlib.contextmanager
def _main_module_hidden():
    """Start workers without re-running the caller's ``__main__`` in them.

    A forkserver child re-imports the parent's main script (multiprocessing's "safe importing
    of main" rule). Workers need nothing from it, and importing, say, ``bin/collect`` would pull
    in torch on every replacement, or re-run an unguarded script. A bare stand-in avoids both.
    """
    main = sys.modules["__main__"]
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        sys.modules["__main__"] = main


class _Worker:
    def __init__(self, context, stage_timeout: int):
        self.conn, child_conn = context.Pipe()
        self.process = context.Process(target=_worker_main, args=(child_conn, stage_timeout), daemon=True,
                                       name="rewards-worker")
        with _main_module_hidden():
            self.process.start()
        child_conn.close()
        self.ready = False
        self.in_flight: deque[int] = deque()  # items sent, in order; the first is the one being scored
        self.clock = 0.0  # when the first in-flight item started (sent to an idle worker, or the previous answered)

    def kill(self) -> None:
        self.process.kill()
        self.process.join(timeout=5)
        self.conn.close()

    def close(self) -> None:
        try:
            self.conn.send(None)
        except (OSError, ValueError):
            pass
        self.process.join(timeout=1)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(timeout=5)
        self.conn.close()


class WorkerPool:
    """Worker processes scoring one (answer, gold) pair at a time under a per-item deadline."""

    def __init__(self, workers: int, stage_timeout: int = STAGE_TIMEOUT_SECONDS):
        self.context = multiprocessing.get_context("forkserver")
        # Only takes effect if this process has not started its forkserver yet; otherwise workers import on start.
        # rewards.warm parses and compares once in the forkserver: every worker forked from it starts warm, so that
        # a first item does not spend 0.1-0.3 s of its deadline there (and a replacement costs no warm-up).
        self.context.set_forkserver_preload(["rewards.verify", "math_verify", "latex2sympy2_extended", "sympy",
                                             "rewards.warm"])
        self.stage_timeout = stage_timeout
        self.workers = [_Worker(self.context, stage_timeout) for _ in range(workers)]
        self.failed_starts = 0

    def run(self, preds: list[str], golds: list[str], todo: list[int], deadline: float,
            result: BatchResult, whole_response: bool = False) -> None:
        """Score items ``todo`` (indices into preds/golds) into ``result``.

        Each worker holds up to ``PIPELINE_DEPTH`` items so that it never waits for the parent;
        the deadline clock of an item starts when the worker starts it (the previous one answered).
        """
        queue = deque(todo)
        while queue or any(w.in_flight for w in self.workers):
            for worker in self.workers:
                while worker.ready and len(worker.in_flight) < PIPELINE_DEPTH and queue:
                    index = queue.popleft()
                    if not worker.in_flight:
                        worker.clock = time.monotonic()
                    worker.in_flight.append(index)
                    worker.conn.send((index, preds[index], golds[index], whole_response))
            busy = [w for w in self.workers if w.in_flight]
            wake = min((w.clock + deadline for w in busy), default=time.monotonic() + 0.5)
            for conn in wait([w.conn for w in self.workers], timeout=max(0.0, wake - time.monotonic())):
                worker = next(w for w in self.workers if w.conn is conn)
                try:
                    message = conn.recv()
                except (EOFError, OSError):  # died on its own: out of memory, a crash in C code
                    if worker.in_flight:
                        result.crashed.append(worker.in_flight[0])
                        self._finish(worker, 0.0, result)
                    elif not worker.ready:
                        self.failed_starts += 1
                        if self.failed_starts >= MAX_FAILED_STARTS:
                            raise RuntimeError("rewards: scoring workers die as they start") from None
                    self._replace(worker, queue)
                    continue
                if message == "ready":
                    worker.ready, self.failed_starts = True, 0
                elif worker.in_flight and message[0] == worker.in_flight[0]:
                    if message[2] is not None:
                        result.preds[message[0]] = message[2]
                    self._finish(worker, 1.0 if message[1] else 0.0, result)
            now = time.monotonic()
            for worker in [w for w in self.workers if w.in_flight and now - w.clock > deadline]:
                result.timed_out.append(worker.in_flight[0])
                self._finish(worker, 0.0, result)
                self._replace(worker, queue)

    def _replace(self, worker: _Worker, queue: deque[int]) -> None:
        """Kill ``worker`` and start another; the items it still held go back to the front of the queue."""
        queue.extendleft(reversed(worker.in_flight))
        worker.kill()
        self.workers[self.workers.index(worker)] = _Worker(self.context, self.stage_timeout)

    @staticmethod
    def _finish(worker: _Worker, reward: float, result: BatchResult) -> None:
        """Record the first in-flight item's reward; the next one starts now."""
        index, now = worker.in_flight.popleft(), time.monotonic()
        result.rewards[index] = reward
        result.seconds[index] = now - worker.clock
        worker.clock = now

    def close(self) -> None:
        for worker in self.workers:
            worker.close()
        self.workers = []


_POOL: WorkerPool | None = None
_POOL_LOCK = threading.RLock()


def _pool(workers: int) -> WorkerPool:
    """The process-wide pool, (re)started with ``workers`` processes."""
    global _POOL
    if _POOL is None or len(_POOL.workers) != workers:
        close_pool()
        _POOL = WorkerPool(workers)
    return _POOL


@atexit.register
def close_pool() -> None:
    """Stop the worker processes (they also exit on their own when this process dies)."""
    global _POOL
    if _POOL is not None:
        _POOL.close()
        _POOL = None


def equivalent_batch(preds: list[str], golds: list[str], workers: int | None = None,
                     deadline: float = DEFAULT_DEADLINE_SECONDS, whole_response: bool = False) -> BatchResult:
    """``equivalent`` over pairs in parallel, each under a hard ``deadline`` in seconds. With
    ``whole_response``, ``preds`` are whole responses and math-verify extracts (the math-verify mode)."""
    if len(preds) != len(golds):
        raise ValueError(f"{len(preds)} answers but {len(golds)} golds")
    n = len(preds)
    result = BatchResult(preds=[p if isinstance(p, str) else "" for p in preds], rewards=[0.0] * n,
                         seconds=[0.0] * n)
    golds = [g if isinstance(g, str) else "" for g in golds]
    todo = []
    for i in range(n):  # what string work settles (nothing to compare, the same text) needs no worker
        if whole_response:
            todo.append(i)
            continue
        start = time.monotonic()
        verdict = quick_verdict(result.preds[i], golds[i])
        if verdict is None:
            todo.append(i)
        else:
            result.rewards[i] = 1.0 if verdict else 0.0
            result.seconds[i] = time.monotonic() - start
    if not todo:
        return result
    with _POOL_LOCK:  # one batch at a time per process: the pool's workers are shared
        pool = _pool(max(1, workers or os.cpu_count() or 1))
        try:
            pool.run(list(result.preds), golds, todo, deadline, result, whole_response)
        except BaseException:
            close_pool()  # workers may still hold items of this batch: never reuse them
            raise
    return result


def score_batch_detailed(responses: list[str], golds: list[str], workers: int | None = None,
                         deadline: float = DEFAULT_DEADLINE_SECONDS,
                         fallbacks: tuple[str, ...] = DEFAULT_FALLBACKS, extraction: str | None = None) -> BatchResult:
    """Extracted answers, rewards, per-item seconds and the indices that timed out. ``extraction`` names a
    mode (boxed, qwen, math-verify); without it, the last box, else ``fallbacks``."""
    if extraction == "math-verify":
        texts = [r if isinstance(r, str) else "" for r in responses]
        result = equivalent_batch(texts, list(golds), workers=workers, deadline=deadline, whole_response=True)
        result.preds = [p if p is not t else "" for p, t in zip(result.preds, texts, strict=True)]
        return result
    if extraction is not None:
        fallbacks = extraction_fallbacks(extraction)
    preds = [extract_answer(r, fallbacks) if isinstance(r, str) else "" for r in responses]
    return equivalent_batch(preds, list(golds), workers=workers, deadline=deadline)


def score_batch(responses: list[str], golds: list[str], workers: int | None = None,
                deadline: float = DEFAULT_DEADLINE_SECONDS,
                fallbacks: tuple[str, ...] = DEFAULT_FALLBACKS, extraction: str | None = None) -> list[float]:
    """``score`` over many responses in parallel processes (default: one per CPU), each item
    under a hard wall-clock ``deadline`` in seconds: a stuck worker is killed and replaced, its item scores 0.0."""
    return score_batch_detailed(responses, golds, workers=workers, deadline=deadline, fallbacks=fallbacks,
                                extraction=extraction).rewards


class StreamScorer:
    """Scores ``(key, response, gold)`` items in a background thread while the caller goes on (sampling the
    rest): items queue up with :meth:`add` and are scored in chunks of ``chunk`` through :func:`score_batch_detailed`
    (the one scoring path, its deadline per item). :meth:`finish` scores what is left and returns
    ``{key: (pred, reward)}``, the keys that timed out, and the seconds spent scoring. A verdict depends on its
    item alone, so the result is the same however items are chunked."""

    def __init__(self, deadline: float = DEFAULT_DEADLINE_SECONDS, extraction: str | None = None, chunk: int = 512):
        import queue

        self.deadline, self.extraction, self.chunk = deadline, extraction, chunk
        self.queue: queue.Queue = queue.Queue()
        self.scored: dict = {}
        self.timed_out: list = []
        self.seconds = 0.0
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="stream-scorer", daemon=True)
        self.thread.start()

    def add(self, items: list[tuple]) -> None:
        self.queue.put(items)

    def finish(self) -> tuple[dict, list, float]:
        self.queue.put(None)
        self.thread.join()
        if self.error is not None:
            raise self.error
        return self.scored, self.timed_out, self.seconds

    def _run(self) -> None:
        pending: list[tuple] = []
        done = False
        try:
            while not done:
                while len(pending) < self.chunk:  # a chunk's worth queued, or the end
                    items = self.queue.get()
                    if items is None:
                        done = True
                        break
                    pending += items
                if pending:
                    chunk, pending = pending[: self.chunk], pending[self.chunk :]
                    self._score(chunk)
            while pending:
                chunk, pending = pending[: self.chunk], pending[self.chunk :]
                self._score(chunk)
        except BaseException as e:  # raised again in finish(), in the caller's thread
            self.error = e

    def _score(self, chunk: list[tuple]) -> None:
        start = time.perf_counter()
        result = score_batch_detailed([r for _, r, _ in chunk], [g for _, _, g in chunk], deadline=self.deadline,
                                      extraction=self.extraction)
        self.seconds += time.perf_counter() - start
        for (key, _, _), pred, reward in zip(chunk, result.preds, result.rewards, strict=True):
            self.scored[key] = (pred, reward)
        self.timed_out += [chunk[i][0] for i in result.timed_out]


def equivalent(pred: str, gold: str, *, timeout_seconds: int = STAGE_TIMEOUT_SECONDS) -> bool:
    """Whether the extracted answer ``pred`` equals ``gold`` mathematically; False on any failure. Bounded in time
    from any thread: in the main thread by math-verify's alarms, in any other by a worker process's deadline."""
    if in_main_thread():
        return equivalent_here(pred, gold, timeout_seconds=timeout_seconds)
    verdict = quick_verdict(pred, gold)
    if verdict is not None:
        return verdict
    return equivalent_batch([normalize_answer(pred)], [normalize_answer(gold)]).rewards[0] == 1.0


def score(response: str, gold: str, fallbacks: tuple[str, ...] = DEFAULT_FALLBACKS,
          extraction: str | None = None) -> float:
    """1.0 if the response's final answer equals ``gold`` mathematically, else 0.0, from any thread (TRL calls reward
    functions from its own). ``extraction`` names a mode of ``EXTRACTIONS`` (boxed, qwen, math-verify); without
    it, the last box, else ``fallbacks``."""
    if extraction == "math-verify":
        if in_main_thread():
            return 1.0 if verify_response(response, gold)[0] else 0.0
        return equivalent_batch([response], [gold], whole_response=True).rewards[0]
    if extraction is not None:
        fallbacks = extraction_fallbacks(extraction)
    return 1.0 if equivalent(extract_answer(response, fallbacks), gold) else 0.0
