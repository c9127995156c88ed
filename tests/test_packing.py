"""--packing: every learner's loss, normaliser and gradient through packed rows equal the padded batch's, in both
layouts, through the loop's own micro-batches and backward; the layouts by hand; a model whose sequences are not
kept apart is refused in one line. (End to end: packed runs in tests/test_fsdp.py and tests/test_ddp.py equal
the unpacked one-process runs.)"""

import contextlib
import copy
from collections import deque
from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch

from offline_rl import packing, train
from offline_rl.learners import LEARNERS
from offline_rl.learners.chord import ExpertExample
from offline_rl.precision import LossScale
from offline_rl.views import Example, Pair, collate, group_accuracies, group_advantages
from rollout.runtime import UsageError
from tests.test_learner_record import SETTINGS

# every learner, and the weightings that need a whole response (dft sequence and geometric)
PACKED_SETTINGS = [*SETTINGS, ("dft", {"weighting": "sequence"}), ("dft", {"weighting": "geometric"})]

ROWS = [  # two prompts, mixed rewards, sequences of 3 to 9 tokens: packed rows hold several of them
    Example("a", [1, 2], [3, 4, 5, 6, 7, 8, 9], [-0.5, -1.0, -0.2, -0.3, -0.1, -0.9, -0.4], reward=1.0),
    Example("a", [1, 2], [6, 7], [-1.2, -0.3], reward=0.0),
    Example("a", [1, 2], [5, 3, 9, 4], [-0.7, -0.2, -0.6, -0.8], reward=1.0),
    Example("b", [1], [3, 8, 9, 4, 4], [-0.1, -0.7, -0.4, -0.9, -0.2], reward=1.0),
    Example("b", [1], [5, 6], [-2.0, -0.4], reward=0.0),
    Example("b", [1], [7, 7, 8, 3, 6, 5, 4], [-0.3, -0.6, -0.2, -1.1, -0.5, -0.4, -0.8], reward=0.0),
]


class OneProcess:
    device = torch.device("cpu")
    num_processes = 1

    def backward(self, loss):
        loss.backward()

    def autocast(self):
        return contextlib.nullcontext()

    def reduce(self, tensor, reduction):
        return tensor


def _items(learner):
    """The learner's examples of ROWS, two micro-batches of them, and how many tokens, responses, pairs they hold."""
    if learner.name == "dpo":
        pairs = [Pair(ROWS[0], ROWS[1]), Pair(ROWS[2], ROWS[1]), Pair(ROWS[3], ROWS[4]), Pair(ROWS[3], ROWS[5])]
        pairs = [Pair(replace(p.chosen, reference_logprob=-3.0), replace(p.rejected, reference_logprob=-2.0))
                 for p in pairs]
        return pairs, [[0, 1], [2, 3]], {"token": 34, "response": 8, "pair": 4}
    items = group_advantages(group_accuracies(ROWS), True)
    if learner.name == "chord":  # two expert rows of 3 and 5 tokens among the samples
        experts = [ExpertExample("x", [1], [3, 4, 5]), ExpertExample("y", [1, 2], [6, 7, 8, 9, 3])]
        return [*items, *experts], [[0, 1, 6, 2], [3, 4, 7, 5]], {"source-token": [27, 8]}
    return items, [[0, 1, 2], [3, 4, 5]], {"token": 27, "response": 6}


def _step(model, reference, learner, cfg, layout):
    """One step of the loop's own micro-batches and backward, packed as ``layout`` says (None: padded): its units,
    loss and the gradient of every parameter (psft's snapshot taken by the loop's own function, a ratio learner's
    mismatch correction reading the reference as its sampling model)."""
    items, drawn, _ = _items(learner)
    model = copy.deepcopy(model)
    temperature = 0.7 if learner.behavior_ratio else None
    run = SimpleNamespace(logit_chunk_size=4, micro_batch_tokens=0)
    state = SimpleNamespace(cfg=run, learner=learner, learner_cfg=cfg, accelerator=OneProcess(), model=model,
                            examples=items, projection=train.fused_projection(learner, cfg, run, temperature),
                            temperatures=(1.0, temperature) if temperature else (1.0,), reference=reference,
                            packing=layout, sampler=reference, snapshots=deque(), loss_scale=LossScale(enabled=False),
                            autocast=contextlib.nullcontext)
    micro = train.micro_batches(state, drawn, pad=0)
    snapshots = [None] * len(micro)
    if learner.snapshot_every is not None:
        train.take_snapshot(state, [micro])
        snapshots = state.snapshots.popleft()
    units = train.count_units(learner, cfg, [batch for batch, _ in micro], state.accelerator)
    loss = sum(train.token_mean(train.backward(state, batch, units, packed, 3, snapshot)[0].detach(), units, 1)
               for (batch, packed), snapshot in zip(micro, snapshots, strict=True))
    return units.tolist(), float(loss), {name: p.grad for name, p in model.named_parameters()}


@pytest.fixture(scope="module")
def models(tiny_model):
    model, _ = tiny_model
    model = copy.deepcopy(model).float()
    model.config.use_cache = False
    reference = copy.deepcopy(model).requires_grad_(False)
    with torch.no_grad():  # a base model apart from the policy: asft's KL is not 0
        for p in reference.parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(0)) * 0.02)
    return model, reference


def test_every_learner_is_checked_packed():
    assert {name for name, _ in PACKED_SETTINGS} == set(LEARNERS)


@pytest.mark.parametrize("name, settings", PACKED_SETTINGS)
def test_packed_rows_give_every_learner_its_own_loss_normaliser_and_gradient(models, name, settings):
    learner = LEARNERS[name]
    cfg = learner.config(**settings)
    units, loss, grads = _step(*models, learner, cfg, None)
    assert units == _items(learner)[2][learner.normaliser(cfg)]  # its paper's count: tokens, responses or pairs
    # the tiny model's own layout, rows as wide as the longest sequence, and one row of all
    layouts = [packing.layout(models[0]), packing.Layout("block-diagonal", balance=1.0), packing.Layout("varlen")]
    for layout in layouts:
        packed_units, packed_loss, packed_grads = _step(*models, learner, cfg, layout)
        assert packed_units == units, layout
        assert packed_loss == pytest.approx(loss, rel=1e-5, abs=1e-7), layout
        for parameter, grad in grads.items():
            torch.testing.assert_close(packed_grads[parameter], grad, rtol=1e-4, atol=1e-6,
                                       msg=lambda m, p=f"{layout} {parameter}": f"{p}: {m}")


def test_sequences_that_see_each_other_fail_the_check(models, monkeypatch):
    """The comparison above is tight enough to catch a packed row whose sequences attend to each other."""
    learner = LEARNERS["dft"]
    _, loss, _ = _step(*models, learner, learner.config(), None)
    pack = packing.pack

    def leaky(batch, layout):  # positions never restart: one causal sequence per row
        packed = pack(batch, layout)
        return replace(packed, position_ids=torch.arange(packed.position_ids.shape[1]).expand_as(packed.position_ids))

    monkeypatch.setattr(packing, "pack", leaky)
    _, leaked, _ = _step(*models, learner, learner.config(), packing.Layout("varlen"))
    assert leaked != pytest.approx(loss, rel=1e-3)


def test_packed_rows_by_hand():
    from transformers import Qwen2Config

    batch = collate([Example("p", [1, 2], [3, 4, 5]), Example("p", [1], [6]), Example("p", [1, 2], [7, 8]),
                     Example("p", [9], [9, 9])], pad_token_id=0)  # sequences of 5, 2, 4 and 3 tokens
    # attention dear (balance 1): rows as wide as the longest, first fit, longest first: 5 | 4 | 3 + 2 (15 slots x 6
    # against 7 wide: 14 x 8); a tail of token 0 at position 0
    narrow = packing.pack(batch, packing.Layout("block-diagonal", balance=1.0))
    assert narrow.input_ids.tolist() == [[1, 2, 3, 4, 5], [1, 2, 7, 8, 0], [9, 9, 9, 1, 6]]
    assert narrow.position_ids.tolist() == [[0, 1, 2, 3, 4], [0, 1, 2, 3, 0], [0, 1, 2, 0, 1]]
    # attention cheap (balance 100): 7 wide, 5 + 2 | 4 + 3, no slot wasted (14 x 1.07 against 15 x 1.05)
    wide = packing.pack(batch, packing.Layout("block-diagonal", balance=100.0))
    assert wide.input_ids.tolist() == [[1, 2, 3, 4, 5, 1, 6], [1, 2, 7, 8, 9, 9, 9]]
    assert wide.position_ids.tolist() == [[0, 1, 2, 3, 4, 0, 1], [0, 1, 2, 3, 0, 1, 2]]
    one = packing.pack(batch, packing.Layout("varlen"))  # one row, no padding at all
    assert one.input_ids.tolist() == [[1, 2, 3, 4, 5, 1, 2, 7, 8, 9, 9, 9, 1, 6]]
    assert one.position_ids.tolist() == [[0, 1, 2, 3, 4, 0, 1, 2, 3, 0, 1, 2, 0, 1]]
    real = batch["attention_mask"].bool()
    for packed in (narrow, wide, one):  # the index leads every real token back to its place
        assert torch.equal(packed.input_ids.flatten()[packed.index[real]], batch["input_ids"][real])
    assert packing.first_fit([3, 3, 3], 6) == [[0, 1], [2]]
    # the embedded model's sizes: q, k, v, o 256 x 64 x (2 x 4 + 2 x 2) and the MLP 3 x 256 x 768 multiply-adds per
    # token, against 2 x 4 x 64 per key: attention costs as much at rows 1,536 wide
    config = Qwen2Config(hidden_size=256, num_attention_heads=4, num_key_value_heads=2, intermediate_size=768)
    assert packing.balance(config) == 1536


def test_micro_batches_by_packed_tokens_and_as_many_on_every_rank():
    from offline_rl.train import length_groups, split_groups

    sizes = [(1, 10), (1, 40), (1, 12), (1, 38)]
    assert length_groups(sizes, max_tokens=60, packed=True) == [[1], [3, 2, 0]]  # 38 + 12 + 10 tokens, no padding
    assert length_groups(sizes, max_tokens=60) == [[1], [3], [2, 0]]  # padded: 3 rows x 38 would be 114
    # a rank with fewer groups than the busiest splits its largest until it has as many
    assert split_groups([[0, 1, 2, 3], [4]], 4) == [[0], [1], [2, 3], [4]]


def test_a_model_that_does_not_keep_sequences_apart_is_refused_in_one_line(tmp_path, tiny_model_dir, capfd):
    from transformers import AutoTokenizer, MambaConfig, MambaForCausalLM

    from rollout.dataset import DatasetWriter
    from rollout.runtime import run
    from tests.conftest import make_rows

    model = MambaForCausalLM(MambaConfig(vocab_size=300, hidden_size=16, state_size=4, num_hidden_layers=1))
    model.config.use_cache = False
    with pytest.raises(UsageError, match="does not keep packed sequences apart"):
        packing.layout(model)  # a recurrent state runs on across the row
    model.save_pretrained(tmp_path / "mamba")
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(tmp_path / "mamba")
    writer = DatasetWriter(tmp_path / "data", {"model": str(tmp_path / "mamba"), "source": {"kind": "world"},
                                               "sampling": {"temperature": 1.0, "top_p": 1.0}})
    writer.write_shard(make_rows())
    writer.finish()
    capfd.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        run(lambda _: train.main(["--data", str(tmp_path / "data"), "--out", str(tmp_path / "out"), "--packing",
                                  "--report-to", "none"]), "train")
    stderr = capfd.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in stderr, stderr
    assert "--packing: MambaForCausalLM" in stderr.strip().splitlines()[-1]
    assert not (tmp_path / "out").exists()
