"""``--backend openai --endpoint URL``: sampling from a running ``vllm serve`` (one replica, or many behind one
address) through its OpenAI-compatible completions API.

Each prompt is one request carrying its token ids, its own seed and ``n``; the answer's token ids
(``return_token_ids``) and per-token log-probs (``logprobs: 0``) come from the server. Requests run
``--concurrency`` at a time; a connection error, a 5xx or a 429 is retried with exponential backoff. The API key
is read from the environment variable ``--api-key-env`` names, never from a flag.

How the server computed its log-probs is not in its answers: vLLM returns the raw model's by default
(``--logprobs-mode raw_logprobs``), the sampled distribution's with ``processed_logprobs``. The dataset records what
``--server-logprobs-mode`` declares, and ratio learners refuse a dataset whose log-probs are not known to be the
sampled distribution's (:func:`offline_rl.policies.ratio_temperature`).
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from rollout.runtime import UsageError
from rollout.sampling import Sample, stop_token_ids

RETRIES = 6  # attempts after the first, 0.5 s doubling up to 30 s between them
TIMEOUT_S = 600.0  # one request's answer (n long samples of a big model may take minutes)


class ServerError(Exception):
    """A request the server refused (4xx): retrying will not help."""


class OpenAIEngine:
    """The engine interface of :mod:`rollout.engines` over a vLLM server."""

    holds_device_memory = False  # the server's memory is its own

    def __init__(self, model: str, endpoint: str | None, api_key_env: str = "OPENAI_API_KEY", concurrency: int = 64,
                 **_engine_options):
        if not endpoint:
            raise UsageError("--backend openai needs --endpoint URL (a running vllm serve)")
        base = endpoint.rstrip("/")
        self.base = base if base.endswith("/v1") else base + "/v1"
        self.api_key = os.environ.get(api_key_env or "", "")
        self.concurrency = concurrency
        from rollout.models import load_tokenizer

        self.tokenizer = load_tokenizer(model)  # the prompts' and stop tokens' ids, as the server's
        self.served = self._served_model(model)

    def _request(self, path: str, body: dict | None = None, retries: int = RETRIES) -> dict:
        """One call, retried with backoff on connection errors, 5xx and 429; a 4xx raises :class:`ServerError`."""
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        data = None if body is None else json.dumps(body).encode()
        for attempt in range(retries + 1):
            request = urllib.request.Request(self.base + path, data=data, headers=headers,
                                             method="GET" if body is None else "POST")
            try:
                with urllib.request.urlopen(request, timeout=TIMEOUT_S) as answer:
                    return json.loads(answer.read())
            except urllib.error.HTTPError as e:
                if e.code != 429 and e.code < 500:
                    detail = e.read().decode(errors="replace")[:300]
                    raise ServerError(f"{self.base}{path} answered {e.code}: {detail}") from None
                error: Exception = e
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as e:
                error = e
            if attempt == retries:
                raise ConnectionError(f"{self.base}{path}: {getattr(error, 'reason', error)}") from None
            time.sleep(min(30.0, 0.5 * 2**attempt))
        raise AssertionError("unreachable")

    def _served_model(self, model: str) -> str:
        """The name the server serves ``model`` under (its only one, or the one named alike); one line if the
        server cannot be reached or serves another model."""
        try:
            served = [m["id"] for m in self._request("/models", retries=2).get("data", [])]
        except (ConnectionError, ServerError, ValueError) as e:
            raise UsageError(f"cannot reach the server at {self.base}: {e}") from None
        if model in served:
            return model
        if len(served) == 1:
            return served[0]
        raise UsageError(f"{self.base} serves {', '.join(served) or 'no model'}, not {model}")

    def generate(self, prompt_token_ids: list[list[int]], sampling, seeds: list[int] | None = None,
                 use_tqdm: bool = True, logprobs: bool = True,
                 on_result: Callable[[int, list], None] | None = None) -> list[list]:
        """Every prompt's ``sampling.n`` samples, in order, each prompt one request (``--concurrency`` in flight);
        ``on_result(i, samples)`` as prompt i's answer arrives."""
        from tqdm.auto import tqdm

        seeds = seeds or [None] * len(prompt_token_ids)
        common = {"model": self.served, "n": sampling.n, "temperature": sampling.temperature, "top_p": sampling.top_p,
                  "max_tokens": sampling.max_tokens, "stop": sampling.stop, "return_token_ids": True,
                  "stop_token_ids": stop_token_ids(self.tokenizer, sampling.stop), "logprobs": 0 if logprobs else None}
        results: list[list | None] = [None] * len(prompt_token_ids)

        def one(i: int) -> int:
            body = {**common, "prompt": prompt_token_ids[i], **({"seed": seeds[i]} if seeds[i] is not None else {})}
            try:
                answer = self._request("/completions", body)
            except ServerError as e:
                raise UsageError(str(e)) from None
            except ConnectionError as e:
                raise UsageError(f"the server stopped answering after {RETRIES} retries: {e}") from None
            results[i] = [self._sample(c, logprobs) for c in sorted(answer["choices"], key=lambda c: c["index"])]
            return i

        with ThreadPoolExecutor(self.concurrency) as pool, \
                tqdm(total=len(results), desc="generate", unit="prompt", disable=not use_tqdm) as bar:
            for i in pool.map(one, range(len(results))) if on_result is None else _as_done(pool, one, len(results)):
                if on_result is not None:
                    on_result(i, results[i])
                bar.update(1)
        return results

    def _sample(self, choice: dict, logprobs: bool) -> Sample:
        ids = choice.get("token_ids")
        if ids is None:
            raise UsageError(f"{self.base} answered without token ids (a vLLM server of version 0.10.2 or later "
                             "returns them)")
        token_logprobs = []
        if logprobs:
            token_logprobs = (choice.get("logprobs") or {}).get("token_logprobs")
            if not token_logprobs or len(token_logprobs) != len(ids) or None in token_logprobs:
                raise UsageError(f"{self.base} answered without per-token log-probs")
        return Sample(list(ids), list(token_logprobs), choice["text"],
                      "stop" if choice.get("finish_reason") == "stop" else "length")

    def load_weights(self, model: str) -> None:
        raise UsageError("the openai backend samples the server's model: it cannot take a new checkpoint's weights "
                         "(rounds and comparisons need the vllm or hf backend)")

    def reset_cache(self) -> None:
        """The server's prefix cache does not change its samples (per-request seeds)."""

    def close(self) -> None:
        """The server is not ours to stop."""


def _as_done(pool: ThreadPoolExecutor, one: Callable[[int], int], count: int):
    from concurrent.futures import as_completed

    for future in as_completed([pool.submit(one, i) for i in range(count)]):
        yield future.result()
