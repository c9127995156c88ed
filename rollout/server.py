"""``--backend openai --endpoint URL``: sampling from a running ``vllm serve`` (one replica, or many behind one
address) through its OpenAI-compatible completions API.

Each prompt is one request carrying its token ids, its own seed and ``n``; the answer's token ids
(``return_token_ids``) and per-token log-probs (``logprobs: 0``) come from the server. Requests run
``--concurrency`` at a time; a dropped connection, a time-out, a 5xx or a 429 is retried with exponential backoff,
a bounded number of times, said in the error. The API key is read from the environment variable
``--api-key-env`` names, never from a flag.

The server is checked when the engine starts, before a command writes anything: ``--endpoint`` is an http(s)
URL, ``/v1/models`` answers and serves the model, and one short completion is read as every answer will be. Every
answer is validated (JSON, fields, types); one that is not what a vLLM server sends is one line naming the URL
and what was wrong (:class:`ServerError`, turned into a :class:`~rollout.runtime.UsageError`).

``vllm serve`` fills every sampling field a request leaves out from the model's ``generation_config.json`` (Qwen's
instruct models: ``top_k: 20``, ``repetition_penalty: 1.05``): each request states every one, neutral where the
command set none (:meth:`OpenAIEngine.request`).

How the server computed its log-probs is not in its answers: vLLM returns the raw model's by default
(``--logprobs-mode raw_logprobs``), the sampled distribution's with ``processed_logprobs``. The dataset records what
``--server-logprobs-mode`` declares, and ratio learners refuse a dataset whose log-probs are not known to be the
sampled distribution's (:func:`offline_rl.policies.ratio_temperature`).
"""

from __future__ import annotations

import http.client
import json
import math
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict

from rollout.runtime import UsageError
from rollout.sampling import Sample, SamplingConfig, stop_token_ids

RETRIES = 6  # while sampling: retries after the first attempt, BACKOFF_S doubling up to 30 s between them
CHECK_RETRIES = 2  # at start-up: a server that is down is said within seconds
BACKOFF_S = 0.5
TIMEOUT_S = 600.0  # one request's answer (n long samples of a big model may take minutes)
CHECK_TIMEOUT_S = 30.0  # /v1/models, and the one-token completion of the start-up check


class ServerError(Exception):
    """The server cannot be asked, or answered what a vLLM server would not (a 4xx, not JSON, a missing or mistyped
    field), or stopped answering past its retries; the message names the URL."""


def endpoint_url(endpoint: str) -> str:
    """``--endpoint`` as the base of the API's paths (``.../v1``); one line unless it is an http(s) URL with a host."""
    parts = urllib.parse.urlsplit(endpoint)
    try:
        port_ok = parts.port is None or parts.port > 0
    except ValueError:  # a port that is not a number, or out of range
        port_ok = False
    if (parts.scheme not in ("http", "https") or not parts.hostname or not port_ok or parts.query or parts.fragment
            or any(c.isspace() for c in endpoint)):
        raise UsageError(f"--endpoint {endpoint!r} is not a server's URL: it must be http(s)://HOST[:PORT][/PATH], "
                         "e.g. http://localhost:8000")
    base = endpoint.rstrip("/")
    return base if base.endswith("/v1") else base + "/v1"


class OpenAIEngine:
    """The engine contract (:class:`rollout.sampling.Engine`) over a vLLM server."""

    serves_own_model = True  # the server's: no new weights can be loaded into it
    start_before_writing = True  # its start only asks the server (seconds), and checks --endpoint and --model
    holds_device_memory = False  # the server's memory is its own
    can_sleep = False

    def __init__(self, model: str, endpoint: str | None, api_key_env: str = "OPENAI_API_KEY", concurrency: int = 64,
                 **_engine_options):
        if not endpoint:
            raise UsageError("--backend openai needs --endpoint URL (a running vllm serve)")
        self.base = endpoint_url(endpoint)
        self.api_key = os.environ.get(api_key_env or "", "")
        self.concurrency = concurrency
        from rollout.models import load_tokenizer

        self.tokenizer = load_tokenizer(model)  # the prompts' and stop tokens' ids, as the server's
        try:
            self.served = self._served_model(model)
            self._check_completions()
        except ServerError as e:
            raise UsageError(str(e)) from None

    @classmethod
    def from_flags(cls, flags, model: str, seed: int) -> OpenAIEngine:
        return cls(model, flags.endpoint, flags.api_key_env, flags.concurrency)

    @classmethod
    def check_flags(cls, flags) -> None:
        """An --endpoint that is a URL; whether it answers, when the engine starts (before any write)."""
        if not flags.endpoint:
            raise UsageError("--backend openai needs --endpoint URL (a running vllm serve)")
        endpoint_url(flags.endpoint)

    @classmethod
    def logprobs_mode(cls, flags) -> str | None:
        """The server's --logprobs-mode is not in its answers: what --server-logprobs-mode declares, else unknown."""
        return flags.server_logprobs_mode if flags is not None else None

    @staticmethod
    def request(sampling: SamplingConfig) -> dict:
        """A completions request's sampling fields, every one stated: the server fills any left out from the
        model's generation_config.json."""
        fields = asdict(sampling)
        return {name: fields[name] for name in ("n", "temperature", "top_p", "top_k", "min_p", "repetition_penalty",
                                                "presence_penalty", "frequency_penalty", "max_tokens", "stop")}

    @classmethod
    def applied(cls, sampling: SamplingConfig) -> dict:
        """Read back from the request it sends."""
        request = cls.request(sampling)
        return {**request, "stop": request["stop"] or None}

    def _request(self, path: str, body: dict | None = None, retries: int = RETRIES, timeout: float = TIMEOUT_S,
                 retry_refused: bool = True):
        """The JSON of one call. A dropped connection, a time-out, a 5xx or a 429 is retried with backoff, at most
        ``retries`` times (a refused connection too, if ``retry_refused``); anything else is a :class:`ServerError`."""
        url = self.base + path
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        data = None if body is None else json.dumps(body).encode()
        for attempt in range(retries + 1):
            request = urllib.request.Request(url, data=data, headers=headers, method="GET" if body is None else "POST")
            try:
                with urllib.request.urlopen(request, timeout=timeout) as answer:
                    raw, content_type = answer.read(), answer.headers.get_content_type()
                return _json(raw, content_type, url)
            except urllib.error.HTTPError as e:
                if e.code != 429 and e.code < 500:
                    hint = " (--api-key-env names the variable holding its key)" if e.code in (401, 403) else ""
                    raise ServerError(f"{url} answered HTTP {e.code}{_detail(e)}{hint}") from None
                error = f"answered HTTP {e.code}{_detail(e)}"
            except urllib.error.URLError as e:  # the socket's error is its reason
                if not isinstance(e.reason, OSError):  # e.g. a host name that is not one
                    raise ServerError(f"{url} cannot be asked: {e.reason}") from None
                if isinstance(e.reason, ConnectionRefusedError) and not retry_refused:
                    raise ServerError(f"{url}: connection refused (is vllm serve running there?)") from None
                error = f"did not answer: {_reason(e.reason)}"
            except http.client.BadStatusLine as e:  # a server that does not speak HTTP; RemoteDisconnected: below
                if not isinstance(e, ConnectionError):
                    raise ServerError(f"{url} answered something that is not HTTP: {_excerpt(str(e))}") from None
                error = f"did not answer: {_reason(e)}"
            except (OSError, http.client.HTTPException) as e:  # reset, time-out, an answer cut short
                error = f"did not answer: {_reason(e)}"
            except ValueError as e:  # http.client.InvalidURL and the like
                raise ServerError(f"{url} cannot be asked: {e}") from None
            if attempt == retries:
                raise ServerError(f"{url} {error}" + (f" (retried {retries} times)" if retries else "")) from None
            time.sleep(min(30.0, BACKOFF_S * 2**attempt))
        raise AssertionError("unreachable")

    def _served_model(self, model: str) -> str:
        """The name the server serves ``model`` under (its only one, or the one named alike); one line if the
        server cannot be reached, answers wrongly, or serves another model."""
        url = self.base + "/models"
        answer = self._request("/models", retries=CHECK_RETRIES, timeout=CHECK_TIMEOUT_S, retry_refused=False)
        models = answer.get("data") if isinstance(answer, dict) else None
        if not isinstance(models, list) or not all(isinstance(m, dict) and isinstance(m.get("id"), str)
                                                   for m in models):
            raise ServerError(f"{url} answered {_value(answer)}, not a list of models "
                              "({\"data\": [{\"id\": ...}, ...]})")
        served = [m["id"] for m in models]
        if model in served:
            return model
        if len(served) == 1:
            return served[0]
        raise ServerError(f"{url}: the server serves {', '.join(served) or 'no model'}, not {model}")

    def _check_completions(self) -> None:
        """One one-token completion, read as every answer will be: a server that answers wrongly is refused before
        a command writes anything."""
        prompt = self.tokenizer.encode("1", add_special_tokens=False) or [0]
        body = {"model": self.served, "prompt": prompt, **self.request(SamplingConfig(n=1, max_tokens=1)), "seed": 0,
                "return_token_ids": True, "logprobs": 0}
        answer = self._request("/completions", body, retries=CHECK_RETRIES, timeout=CHECK_TIMEOUT_S)
        completion_samples(answer, 1, logprobs=True, url=self.base + "/completions")

    def generate(self, prompt_token_ids: list[list[int]], sampling, seeds: list[int] | None = None,
                 use_tqdm: bool = True, logprobs: bool = True,
                 on_result: Callable[[int, list], None] | None = None) -> list[list]:
        """Every prompt's ``sampling.n`` samples, in order, each prompt one request (``--concurrency`` in flight);
        ``on_result(i, samples)`` as prompt i's answer arrives. The first failed request stops the rest."""
        from tqdm.auto import tqdm

        seeds = seeds or [None] * len(prompt_token_ids)
        common = {"model": self.served, **self.request(sampling), "return_token_ids": True,
                  "stop_token_ids": stop_token_ids(self.tokenizer, sampling.stop), "logprobs": 0 if logprobs else None}
        results: list[list | None] = [None] * len(prompt_token_ids)

        def one(i: int) -> int:
            body = {**common, "prompt": prompt_token_ids[i], **({"seed": seeds[i]} if seeds[i] is not None else {})}
            answer = self._request("/completions", body)
            results[i] = completion_samples(answer, sampling.n, logprobs, self.base + "/completions")
            return i

        with ThreadPoolExecutor(self.concurrency) as pool, \
                tqdm(total=len(results), desc="generate", unit="prompt", disable=not use_tqdm) as bar:
            futures = [pool.submit(one, i) for i in range(len(results))]
            try:
                for future in futures if on_result is None else as_completed(futures):
                    i = future.result()
                    if on_result is not None:
                        on_result(i, results[i])
                    bar.update(1)
            except BaseException as e:
                pool.shutdown(cancel_futures=True)  # the requests not yet sent are not sent
                if isinstance(e, ServerError):
                    raise UsageError(str(e)) from None
                raise
        return results

    def load_weights(self, model: str) -> None:
        raise UsageError("the openai backend samples the server's model: it cannot take a new checkpoint's weights "
                         "(rounds and comparisons need the vllm or hf backend)")

    def reset_cache(self) -> None:
        """The server's prefix cache does not change its samples (per-request seeds)."""

    def sleep(self) -> None:
        raise RuntimeError("a server's memory is its own: the openai engine cannot sleep (can_sleep is False)")

    def wake_up(self) -> None:
        raise RuntimeError("a server's memory is its own: the openai engine cannot sleep (can_sleep is False)")

    def close(self) -> None:
        """The server is not ours to stop."""


def completion_samples(answer, n: int, logprobs: bool, url: str) -> list[Sample]:
    """A completions answer's ``n`` samples in the order of their index; a :class:`ServerError` naming ``url`` and
    the first field that is missing or of the wrong type."""
    def wrong(what: str) -> ServerError:
        return ServerError(f"{url} answered {what}")

    choices = answer.get("choices") if isinstance(answer, dict) else None
    if not isinstance(choices, list):
        raise wrong(f"{_value(answer)}, not a completion ({{\"choices\": [...]}})")
    if len(choices) != n:
        raise wrong(f"{len(choices)} choices, not n = {n}")
    samples: dict[int, Sample] = {}
    for choice in choices:
        if not isinstance(choice, dict):
            raise wrong(f"a choice that is not an object: {_value(choice)}")
        missing = [name for name in ("index", "text") if name not in choice]
        if missing:
            raise wrong(f"a choice without {' or '.join(repr(name) for name in missing)}")
        index, text, ids = choice["index"], choice["text"], choice.get("token_ids")
        if not _is_int(index) or not 0 <= index < n or index in samples:
            raise wrong(f"a choice whose index is {_value(index)}, not one of 0..{n - 1} once each")
        if not isinstance(text, str):
            raise wrong(f"a choice whose text is {_value(text)}, not a string")
        if ids is None:
            raise wrong("without token ids (a vLLM server of version 0.10.2 or later returns them)")
        if not isinstance(ids, list) or not all(_is_int(t) and t >= 0 for t in ids):
            raise wrong(f"token_ids {_value(ids)}, not a list of token ids")
        if not isinstance(choice.get("finish_reason"), str | None):
            raise wrong(f"a finish_reason {_value(choice['finish_reason'])}, not a string")
        token_logprobs = []
        if logprobs:
            given = choice.get("logprobs")
            token_logprobs = given.get("token_logprobs") if isinstance(given, dict) else None
            if not token_logprobs or len(token_logprobs) != len(ids) or None in token_logprobs:
                raise wrong("without per-token log-probs (one per token id)")
            if not all(isinstance(x, int | float) and not isinstance(x, bool) and not math.isnan(x)
                       for x in token_logprobs):
                raise wrong(f"token_logprobs {_value(token_logprobs)}, not numbers")
        samples[index] = Sample(list(ids), [float(x) for x in token_logprobs], text,
                                "stop" if choice.get("finish_reason") == "stop" else "length")
    return [samples[i] for i in range(n)]


def _json(raw: bytes, content_type: str, url: str):
    text = raw.decode("utf-8", errors="replace")
    try:
        return json.loads(text)
    except ValueError:
        page = "an HTML page" if content_type == "text/html" or text.lstrip().startswith("<") else "something"
        raise ServerError(f"{url} answered {page}, not JSON: {_excerpt(text)}") from None


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _value(value, limit: int = 80) -> str:
    """A JSON value as the server sent it, cut at ``limit`` characters."""
    text = json.dumps(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _excerpt(text: str, limit: int = 80) -> str:
    """``text`` on one line, cut at ``limit`` characters: what a server said, quoted in a one-line error."""
    flat = " ".join(str(text).split())
    return repr(flat if len(flat) <= limit else flat[:limit] + "...")


def _detail(error: urllib.error.HTTPError) -> str:
    try:
        body = error.read().decode(errors="replace")
    except OSError:
        body = ""
    return f": {_excerpt(body)}" if body.strip() else ""


def _reason(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__
