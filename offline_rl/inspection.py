"""``offline-rl inspect DATA --model M``: will DFT help on this data? The data's token probabilities under a model.

DFT weights each token's NLL by the token's probability under the policy, ``sg(p_t)``; a dataset whose tokens
the model finds unlikely gets small weights, and "Beyond Log Likelihood" (arXiv 2510.00526) finds such
prior-leaning objectives win where the model is already strong on the data and lose where it is weak. This
reports, for the responses of one view of a dataset (default: ``accepted``, what dft trains on) under a model
(default: the one that collected it):

- the histogram of token probabilities ``p_t`` (DFT's weights at step 0) and the share of tokens under 0.1;
- per response: the mean log-prob and the mean entropy of the model's next-token distribution;
- the weight DFT gives the EOS token that ends each finished response.

Writes ``OUT/inspect.json`` and ``OUT/inspect.png`` (the histograms); a progress bar over the batches.
:func:`score_logprobs` reads data under a model the same way for ``bin/rescore --logprobs-model``.
"""

from __future__ import annotations

import json
import statistics
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from offline_rl import views
from offline_rl.policies import frozen_model
from offline_rl.projection import LogitHead, _unwrap, logit_transform, token_logprobs
from rollout.dataset import complete_manifests, load_offline_dataset, write_json
from rollout.files import Finished, hold_directory
from rollout.models import load_tokenizer, resolve_model
from rollout.runtime import CommandContext, UsageError, parse_config, print_config

LOW = 0.1  # "unlikely": the share of tokens under this probability is reported
# The capability continuum (results/README.md#capability-continuum--embedded-continuum): three bases of the world
# (make-base --steps 400, 1000, 2500), each base's share of its demonstrations' tokens under LOW, and DFT's lead
# over SFT trained on them (test-id avg@4 points, 3 seeds)
CONTINUUM = ((0.012, 2.6), (0.002, 3.1), (0.001, 5.5))


@dataclass
class InspectConfig:
    data: str = field(default=None, metadata={
        "help": "offline dataset directory (or several, comma-separated); also the first positional argument"})
    model: str = field(default=None, metadata={
        "help": "the model to read the data with (default: the model that collected it)"})
    out: str = field(default=None, metadata={
        "help": "output directory for inspect.json and inspect.png (default: runs/inspect-<data>-<model>-<view>)"})
    view: str = field(default="accepted", metadata={
        "help": "which responses: accepted (what dft trains on) or all", "choices": ["accepted", "all"]})
    batch_size: int = field(default=16, metadata={"help": "responses per forward pass", "min": 1, "advanced": True})
    logit_chunk_size: int = field(default=256, metadata={
        "help": "response tokens per vocabulary-projection chunk", "min": 1, "advanced": True})
    bins: int = field(default=20, metadata={"help": "histogram bins over [0, 1]", "min": 2, "advanced": True})
    force: bool = field(default=False, metadata={"help": "write into an OUT that inspect did not make, or replace "
                                                 "another model's, view's or dataset's finished inspection"})


def main(argv: list[str] | None = None, *, context: CommandContext | None = None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and not argv[0].startswith("-"):  # DATA first, as `offline-rl inspect DATA --model M`
        if any(a == "--data" or a.startswith("--data=") for a in argv[1:]):
            raise UsageError(f"DATA {argv[0]} and --data both name the dataset: give one of them")
        argv = ["--data", argv[0], *argv[1:]]
    return run_inspect(parse_config(InspectConfig, argv, "inspect", __doc__), context=context)


def run_inspect(cfg: InspectConfig, *, context: CommandContext | None = None) -> dict:
    """``offline-rl inspect``: the data's token probabilities under the model (it needs nothing of the ``context``)."""
    if cfg.data is None:
        raise UsageError("DATA (or --data) is required")
    manifests = complete_manifests(cfg.data)
    model_path = resolve_model(cfg.model or next(iter(manifests.values()))["model"])
    examples = views.view_examples(load_offline_dataset(cfg.data), cfg.view)
    if not examples:
        raise UsageError(f"no {cfg.view} responses in {cfg.data}")
    tokenizer = load_tokenizer(model_path)
    out = Path(cfg.out) if cfg.out else default_out(cfg.data, model_path, cfg.view)
    settings = {**{k: v for k, v in asdict(cfg).items() if k not in ("out", "force")}, "model": model_path}
    hold_directory(out, "inspect", force=cfg.force, owned=lambda d: (d / "inspect.json").is_file(),
                   finished=Finished("inspection of {data} by {model} ({view})", "inspect.json", settings,
                                     saved_settings))
    print_config(cfg, out=out)
    per_token, per_response, eos = read_probabilities(model_path, tokenizer, examples, cfg)
    summary = summarize(per_token, per_response, eos, cfg)
    summary.update(data=cfg.data, model=model_path, view=cfg.view, config=asdict(cfg))
    write_json(out / "inspect.json", summary)
    plot(per_token, per_response, eos, summary, out / "inspect.png")
    print(format_summary(summary, out))
    return summary


def saved_settings(out: Path) -> dict:
    """The settings of the finished inspection in ``out``, with the model it read the data with."""
    saved = json.loads((out / "inspect.json").read_text())
    return {**saved["config"], "model": saved["model"]}


def default_out(data: str, model: str, view: str) -> Path:
    """``runs/inspect-DATA-MODEL-VIEW``: another model's or view's reading of the same data never lands on this one."""
    names = "+".join(Path(p).name for p in data.split(",") if p)
    return Path("runs") / f"inspect-{names}-{Path(model).name}-{view}"


@torch.no_grad()
def read_probabilities(model_path: str, tokenizer, examples: list, cfg: InspectConfig):
    """Every response token's probability, each response's (mean log-prob, mean entropy), and the probability of
    each finished response's closing EOS."""
    from transformers import AutoModelForCausalLM

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).to(device).eval()
    head = LogitHead(_unwrap(model).get_output_embeddings(), *logit_transform(model))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    per_token: list[float] = []
    per_response: list[tuple[float, float]] = []
    eos: list[float] = []
    for begin in tqdm(range(0, len(examples), cfg.batch_size), desc="inspect", unit="batch"):
        chunk = examples[begin : begin + cfg.batch_size]
        batch = {k: v.to(device) for k, v in views.collate(chunk, pad).items()}
        hidden = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                       output_hidden_states=True, logits_to_keep=1).hidden_states[-1]
        for row, example in enumerate(chunk):
            where = batch["response_mask"][row].bool()
            logprobs, entropies = token_logprobs_and_entropy(head, hidden[row][where], batch["targets"][row][where],
                                                             cfg.logit_chunk_size)
            per_token += logprobs.exp().tolist()
            per_response.append((logprobs.mean().item(), entropies.mean().item()))
            if example.response_token_ids and example.response_token_ids[-1] == tokenizer.eos_token_id:
                eos.append(logprobs[-1].exp().item())
    return per_token, per_response, eos


def token_logprobs_and_entropy(head: LogitHead, hidden: torch.Tensor, targets: torch.Tensor, chunk: int):
    """log p(target) and the entropy of the next-token distribution at each of ``hidden``'s positions, chunk by
    chunk (no [N, V] block beyond one chunk)."""
    logprobs, entropies = [], []
    for i in range(0, hidden.shape[0], chunk):
        lsm = head(hidden[i : i + chunk], float32=True).log_softmax(-1)  # [n, V]
        logprobs.append(lsm.gather(-1, targets[i : i + chunk].unsqueeze(-1)).squeeze(-1))
        entropies.append(-(lsm.exp() * lsm).sum(-1))
    return torch.cat(logprobs), torch.cat(entropies)


def summarize(per_token: list[float], per_response: list[tuple[float, float]], eos: list[float], cfg) -> dict:
    edges = [i / cfg.bins for i in range(cfg.bins + 1)]
    counts = [0] * cfg.bins
    for p in per_token:
        counts[min(cfg.bins - 1, int(p * cfg.bins))] += 1
    mean_logprobs = [m for m, _ in per_response]
    entropies = [e for _, e in per_response]

    def spread(values: list[float]) -> dict:
        ordered = sorted(values)
        return {"mean": statistics.fmean(values), "median": statistics.median(values),
                "p10": ordered[int(0.1 * (len(ordered) - 1))], "p90": ordered[int(0.9 * (len(ordered) - 1))]}

    return {
        "responses": len(per_response), "tokens": len(per_token),
        "token_probability": {"mean": statistics.fmean(per_token), "median": statistics.median(per_token),
                              f"share_below_{LOW}": sum(p < LOW for p in per_token) / len(per_token),
                              "histogram": {"edges": edges, "counts": counts}},
        "response_mean_logprob": spread(mean_logprobs),
        "response_mean_entropy": spread(entropies),
        "eos": {"responses_ending_in_eos": len(eos), "mean_probability": statistics.fmean(eos) if eos else None,
                f"share_below_{LOW}": sum(p < LOW for p in eos) / len(eos) if eos else None},
    }


def plot(per_token: list[float], per_response: list[tuple[float, float]], eos: list[float], summary: dict,
         path: Path) -> None:
    """Token probabilities (all, and the closing EOS) and per-response mean log-probs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from offline_rl.experiments.plots import save_figure

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    edges = summary["token_probability"]["histogram"]["edges"]
    left.hist(per_token, bins=edges, color="C0", alpha=0.8, label=f"tokens ({len(per_token)})", density=True)
    if eos:
        left.hist(eos, bins=edges, color="C3", alpha=0.5, label=f"closing EOS ({len(eos)})", density=True)
    left.axvline(LOW, color="0.4", linestyle=":", linewidth=1)
    left.set(xlabel="p(token) under the model: DFT's weight", ylabel="density", yscale="log")
    left.legend(fontsize=8)
    right.hist([m for m, _ in per_response], bins=30, color="C2", alpha=0.8)
    right.set(xlabel="mean log-prob per response", ylabel="responses")
    fig.suptitle(f"{summary['responses']} responses; {100 * summary['token_probability'][f'share_below_{LOW}']:.1f} % "
                 f"of tokens under p = {LOW}", fontsize=10)
    save_figure(fig, path)


def format_summary(summary: dict, out: Path) -> str:
    tp, lp, ent, eos = (summary["token_probability"], summary["response_mean_logprob"],
                        summary["response_mean_entropy"], summary["eos"])
    eos_line = (f"{eos['mean_probability']:.3f} mean over {eos['responses_ending_in_eos']} responses"
                if eos["mean_probability"] is not None else "no response ends in EOS")
    return (f"{summary['responses']} {summary['view']} responses, {summary['tokens']} tokens -> {out}\n"
            f"  token probability: mean {tp['mean']:.3f}, median {tp['median']:.3f}, "
            f"{100 * tp[f'share_below_{LOW}']:.1f} % under {LOW}\n"
            f"  per response: mean log-prob {lp['mean']:.3f} (p10 {lp['p10']:.3f}, p90 {lp['p90']:.3f}), "
            f"mean entropy {ent['mean']:.3f} nats\n"
            f"  EOS weight: {eos_line}\n"
            f"{reading(tp[f'share_below_{LOW}'])}")


def reading(share: float) -> str:
    """One plain line: ``share`` (of tokens under LOW) against what the capability continuum measured."""
    most, fewest = max(s for s, _ in CONTINUUM), min(s for s, _ in CONTINUUM)
    leads = sorted(lead for _, lead in CONTINUUM)
    measured = f"the capability continuum's bases ({100 * fewest:.1f}-{100 * most:.1f} %"
    if share > most:
        verdict = (f"more than any of {measured}, all with DFT above SFT): untested; 2510.00526 finds DFT-like "
                   "losses behind NLL where the model finds its data unlikely")
    elif share >= fewest:
        verdict = (f"as on {measured}), where DFT beat SFT on every base, by more where fewer were "
                   f"unlikely (+{leads[0]:.1f} to +{leads[-1]:.1f} points; one synthetic world)")
    else:
        verdict = (f"fewer than on {measured}); the most confident gave DFT its largest lead over SFT "
                   f"(+{leads[-1]:.1f} points; one synthetic world)")
    return f"reading: {100 * share:.1f} % of tokens under p = {LOW}, {verdict}"


def score_logprobs(model_path: str, prompts: list[list[int]], responses: list[list[int]], batch_size: int = 8,
                   chunk_size: int = 256) -> list[list[float]]:
    """Each response's token log-probs under the model at ``model_path`` at temperature 1, in float32, as the trainer
    projects them (its chunked float32 projection, the model's logit scaling applied): what ``bin/rescore
    --logprobs-model`` stores for demonstrations, so that a ratio learner starting from that model reads a ratio of
    1 at its first step."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = frozen_model(model_path, device)
    tokenizer = load_tokenizer(model_path)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    scored: list[list[float]] = []
    with torch.no_grad():
        for begin in range(0, len(prompts), batch_size):
            examples = [views.Example("", p, r) for p, r in zip(prompts[begin : begin + batch_size],
                                                                responses[begin : begin + batch_size], strict=True)]
            batch = {k: v.to(device) for k, v in views.collate(examples, pad).items()}
            logprobs = token_logprobs(model, batch, chunk_size, float32=True)  # [b, T]
            scored += [logprobs[i][batch["response_mask"][i].bool()].tolist() for i in range(len(examples))]
    return scored
