"""The AWD-LSTM language model and its training (models/awd_lstm.py, train_lm.py).

The model's regularisers (tied weights, locked dropout, embedding dropout, weight drop), its
scoring and its checkpoints; the trainer's data layout, evaluation, learning, determinism and,
above all, that an interrupted run resumes to exactly the weights and metrics of an
uninterrupted one (Adam and NT-ASGD, mid-epoch, at an epoch's end, after the epoch-end save).

All on the CPU with one thread, on tiny synthetic corpora, so the file runs in seconds.
"""

from __future__ import annotations

import copy
import math
import os
import pickle

import numpy as np
import pytest
import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook

from cvinterp import train_lm
from cvinterp.data.prose import corpus_from_tokens
from cvinterp.models import CheckpointError
from cvinterp.models.awd_lstm import (
    AWDLSTM,
    embedding_dropout,
    load_lm,
    locked_dropout,
    save_lm,
)
from cvinterp.train_lm import batchify, evaluate_lm, train_language_model

CPU = torch.device("cpu")
WORDS = [f"w{i}" for i in range(10)]


def cycle(n: int, offset: int = 0) -> list[str]:
    """w0 w1 ... w9 w0 w1 ...: every next word is determined by the current one."""
    return [WORDS[(i + offset) % len(WORDS)] for i in range(n)]


CYCLE = corpus_from_tokens(cycle(1600), cycle(320, 3), cycle(320, 7))
V = len(CYCLE.vocab)  # <unk>, <eos> and the 10 words

ARCH = dict(
    emb=16, hidden=24, layers=2, dropout=0.2, dropouth=0.2, dropouti=0.2, dropoute=0.1,
    wdrop=0.3, tie=True,
)  # fmt: skip
ADAM = dict(
    arch_args=ARCH, epochs=3, batch_size=4, bptt=10, optimizer="adam", lr=0.01,
    weight_decay=1e-6, clip=0.25, alpha=2.0, beta=1.0, nonmono=1, eval_batch_size=4,
    test_batch_size=2, tokens_per_epoch=None, checkpoint_seconds=1e9, seed=0, device=CPU,
    progress=False,
)  # fmt: skip
# Plain SGD at this learning rate stalls by epoch 8 (validation worse than the best of the epochs
# before the last one), so NT-ASGD switches to ASGD for epochs 9 and 10.
NT_ASGD = {**ADAM, "optimizer": "nt_asgd", "lr": 30.0, "epochs": 10}

RESULT_METRICS = (
    "valid_perplexity", "valid_loss", "test_perplexity", "test_loss", "train_tokens_per_epoch",
    "valid_tokens", "test_tokens", "vocab_size", "parameters",
)  # fmt: skip


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def _keep_global_rng():
    """Training reseeds torch's global generator: leave it as the next test file expects."""
    state = torch.get_rng_state()
    yield
    torch.set_rng_state(state)


class Killed(Exception):
    """A simulated crash inside a training step."""


class Spy:
    """Swap train_lm's AWDLSTM for a subclass that records every forward call.

    `trace` holds "T" for a training step and "E" for an evaluation window; `inputs` the token
    windows of the training steps. With `kill_at`, the kill_at-th training step raises Killed
    before doing anything (the process dying mid-epoch).
    """

    def __init__(self, monkeypatch, kill_at: int | None = None):
        self.trace: list[str] = []
        self.inputs: list[torch.Tensor] = []
        spy = self

        class Recording(AWDLSTM):
            def forward(self, tokens, state=None):
                if self.training:
                    if kill_at is not None and spy.trace.count("T") + 1 >= kill_at:
                        raise Killed
                    spy.trace.append("T")
                    spy.inputs.append(tokens.clone())
                else:
                    spy.trace.append("E")
                return super().forward(tokens, state)

        monkeypatch.setattr(train_lm, "AWDLSTM", Recording)

    def epochs(self) -> list[list[torch.Tensor]]:
        """The training windows, grouped by epoch (epochs end with a validation)."""
        out, current, i = [], [], 0
        for kind in self.trace:
            if kind == "T":
                current.append(self.inputs[i])
                i += 1
            elif current:
                out.append(current)
                current = []
        return out

    def steps_per_epoch(self) -> list[int]:
        return [len(e) for e in self.epochs()]


def run(corpus=CYCLE, settings=ADAM, **overrides):
    return train_language_model(corpus, **{**settings, **overrides})


def traced_run(settings, **overrides):
    with pytest.MonkeyPatch.context() as mp:
        spy = Spy(mp)
        model, metrics = run(settings=settings, **overrides)
    return model, metrics, spy


@pytest.fixture(scope="module")
def adam_full():
    """(model, metrics, spy) of an uninterrupted Adam run."""
    return traced_run(ADAM)


@pytest.fixture(scope="module")
def asgd_run():
    """An uninterrupted NT-ASGD run, with every ASGD optimizer and its post-step weights."""
    asgd_opts, after_step = [], []

    def hook(opt, args, kwargs):
        if isinstance(opt, torch.optim.ASGD):
            if not asgd_opts or asgd_opts[-1] is not opt:
                asgd_opts.append(opt)
            after_step.append([p.detach().clone() for p in opt.param_groups[0]["params"]])

    handle = register_optimizer_step_post_hook(hook)
    try:
        model, metrics, spy = traced_run(NT_ASGD)
    finally:
        handle.remove()
    return model, metrics, spy, asgd_opts, after_step


def strip_train_loss(history):
    return [{k: v for k, v in h.items() if k != "train_loss"} for h in history]


def assert_same_run(got, want, *, train_loss: bool = False):
    """Identical weights (bit for bit), result metrics and per-epoch history."""
    (model, metrics), (ref_model, ref_metrics) = got[:2], want[:2]
    assert model is not None and metrics is not None
    sd, ref = model.state_dict(), ref_model.state_dict()
    assert sd.keys() == ref.keys()
    for k in sd:
        assert torch.equal(sd[k], ref[k]), k
    for k in RESULT_METRICS:
        assert metrics[k] == ref_metrics[k], k
    if train_loss:
        assert metrics["history"] == ref_metrics["history"]
    else:
        assert strip_train_loss(metrics["history"]) == strip_train_loss(ref_metrics["history"])


def saved(path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def tiny(vocab=11, **kw) -> AWDLSTM:
    args = dict(emb=6, hidden=9, layers=2, dropout=0.0, dropouth=0.0, dropouti=0.0)
    args.update(dropoute=0.0, wdrop=0.0, tie=True)
    args.update(kw)
    torch.manual_seed(3)
    return AWDLSTM(vocab, **args)


# --------------------------------------------------------------------------- model
@pytest.mark.parametrize("layers", [1, 3])
def test_tied_weights_and_layer_widths(layers):
    tied = AWDLSTM(30, emb=8, hidden=12, layers=layers, tie=True)
    assert tied.decoder.weight is tied.encoder.weight
    assert [r.hidden_size for r in tied.rnns] == [12] * (layers - 1) + [8]
    assert tied.rnns[0].input_size == 8
    untied = AWDLSTM(30, emb=8, hidden=12, layers=layers, tie=False)
    assert untied.decoder.weight is not untied.encoder.weight
    assert [r.hidden_size for r in untied.rnns] == [12] * layers
    assert untied.decoder.weight.shape == (30, 12)
    logits, state, raw, dropped = tied.eval()(torch.randint(0, 30, (2, 5)))
    assert logits.shape == (2, 5, 30) and raw.shape == dropped.shape == (2, 5, 8)
    assert len(state) == layers
    # the tie is one parameter, which training updates for both ends
    assert sum(p is tied.encoder.weight for p in tied.parameters()) == 1
    for m in (tied, untied):
        again = AWDLSTM(30, **m.arch_args())
        assert again.arch_args() == m.arch_args()
        assert {k: v.shape for k, v in again.state_dict().items()} == {
            k: v.shape for k, v in m.state_dict().items()
        }
        assert (again.decoder.weight is again.encoder.weight) == m.tie


def test_locked_dropout_one_mask_per_sequence():
    torch.manual_seed(0)
    p = 0.4
    x = torch.ones(6, 20, 7)
    out = locked_dropout(x, p, training=True)
    assert out.shape == x.shape
    assert torch.equal(out, out[:, :1].expand_as(out))  # constant over time
    scale = torch.tensor(1 / (1 - p))
    assert bool(((out == 0) | torch.isclose(out, scale)).all())
    assert (out == 0).any() and (out != 0).any()
    # different sequences (and features) get different masks
    assert not torch.equal(out[0, 0], out[1, 0]) or not torch.equal(out[2, 0], out[3, 0])
    assert torch.equal(locked_dropout(x, p, training=False), x)
    assert torch.equal(locked_dropout(x, 0.0, training=True), x)


def test_output_dropout_of_the_model_is_locked():
    """forward's last output: raw * one (batch, feature) mask for every time step."""
    model = tiny(dropout=0.5).train()
    torch.manual_seed(1)
    _, _, raw, dropped = model(torch.randint(0, 11, (4, 9)))
    mask = dropped[:, :1] / raw[:, :1]
    assert bool(((mask.abs() < 1e-6) | torch.isclose(mask, torch.tensor(2.0))).all())
    torch.testing.assert_close(dropped, raw * mask)
    assert (mask.abs() < 1e-6).any() and (mask > 1).any()


def test_embedding_dropout_drops_whole_word_types():
    torch.manual_seed(0)
    embed = nn.Embedding(10, 6)
    tokens = torch.arange(10).repeat(3).view(3, 10)[:, torch.randperm(10)]
    tokens = torch.cat([tokens, tokens.flip(1)], 1)  # every id 6 times, at scattered places
    p = 0.5
    out = embedding_dropout(embed, tokens, p, training=True)
    dropped, kept = 0, 0
    for word in range(10):
        vectors = out[tokens == word]
        assert vectors.shape[0] == 6
        assert torch.equal(vectors, vectors[:1].expand_as(vectors)), word
        if torch.equal(vectors[0], torch.zeros(6)):
            dropped += 1
        else:
            torch.testing.assert_close(vectors[0], embed.weight[word] / (1 - p))
            kept += 1
    assert dropped > 0 and kept > 0
    assert torch.equal(embedding_dropout(embed, tokens, p, training=False), embed(tokens))
    assert torch.equal(embedding_dropout(embed, tokens, 0.0, training=True), embed(tokens))


def plain_forward(model: AWDLSTM, tokens, zero_hh: bool = False):
    """The model's forward rebuilt from independent nn.LSTMs with copies of its weights."""
    x = model.encoder.weight.detach()[tokens]
    for rnn in model.rnns:
        plain = nn.LSTM(rnn.input_size, rnn.hidden_size, batch_first=True)
        plain.load_state_dict(rnn.state_dict())
        if zero_hh:
            with torch.no_grad():
                plain.weight_hh_l0.zero_()
        x, _ = plain(x)
    return model.decoder(x).detach()


def test_weight_drop_masks_hidden_to_hidden_weights_per_forward_only():
    model = tiny(vocab=13, emb=8, hidden=10, layers=2, wdrop=0.5, tie=False).train()
    tokens = torch.randint(0, 13, (3, 7))
    params = list(model.named_parameters())
    stored = {k: v.detach().clone() for k, v in model.state_dict().items()}
    torch.manual_seed(1)
    out1 = model(tokens)[0]
    torch.manual_seed(2)
    out2 = model(tokens)[0]
    assert not torch.allclose(out1, out2)  # a new DropConnect mask per forward pass
    torch.manual_seed(1)
    assert torch.equal(model(tokens)[0], out1)  # the mask comes from torch's generator
    # the stored weights (and the Parameter objects) are untouched by the masking
    for (name, p), (_, q) in zip(model.named_parameters(), params, strict=True):
        assert p is q, name
    for k, v in model.state_dict().items():
        assert torch.equal(v, stored[k]), k
    for rnn in model.rnns:
        assert isinstance(rnn.weight_hh_l0, nn.Parameter)
    out1.pow(2).sum().backward()
    for i, rnn in enumerate(model.rnns):
        assert rnn.weight_hh_l0.grad is not None, i
        assert rnn.weight_hh_l0.grad.abs().sum() > 0, i
        assert rnn.weight_ih_l0.grad.abs().sum() > 0, i
    # wdrop=1 drops every hidden-to-hidden weight, and only those
    model.wdrop = 1.0
    torch.testing.assert_close(model(tokens)[0].detach(), plain_forward(model, tokens, True))
    # eval: no DropConnect, deterministic, a plain LSTM with the stored weights
    model.wdrop = 0.5
    model.eval()
    torch.manual_seed(1)
    a = model(tokens)[0]
    torch.manual_seed(2)
    b = model(tokens)[0]
    assert torch.equal(a, b)
    torch.testing.assert_close(a.detach(), plain_forward(model, tokens))
    assert not torch.allclose(a, plain_forward(model, tokens, True))


def test_eval_mode_applies_no_dropout_at_all():
    model = tiny(dropout=0.4, dropouth=0.3, dropouti=0.5, dropoute=0.2, wdrop=0.5).eval()
    tokens = torch.randint(0, 11, (2, 8))
    torch.manual_seed(0)
    logits, _, raw, dropped = model(tokens)
    assert torch.equal(raw, dropped)
    torch.testing.assert_close(logits, plain_forward(model, tokens))


@pytest.mark.parametrize("tie,layers", [(True, 2), (False, 3), (True, 1)])
def test_last_log_probs_is_the_log_softmax_at_each_rows_last_token(tie, layers):
    model = tiny(vocab=17, tie=tie, layers=layers, dropout=0.3, wdrop=0.4).eval()
    lengths = torch.tensor([7, 3, 5, 1])
    tokens = torch.randint(2, 17, (4, 7))
    for row, n in enumerate(lengths):
        tokens[row, n:] = 0  # right padding
    got = model.last_log_probs(tokens, lengths)
    assert got.shape == (4, 17)
    logits = model(tokens)[0]  # padding after a position cannot change it
    for row, n in enumerate(lengths.tolist()):
        want = torch.log_softmax(logits[row, n - 1], -1)
        torch.testing.assert_close(got[row], want, rtol=1e-5, atol=1e-5)
        alone = torch.log_softmax(model(tokens[row : row + 1, :n])[0][0, -1], -1)
        torch.testing.assert_close(got[row], alone, rtol=1e-5, atol=1e-5)
    full = model.last_log_probs(tokens)  # no lengths: every row is 7 long
    torch.testing.assert_close(full, torch.log_softmax(logits[:, -1], -1), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(full[1], got[1])  # the padded row differs when read to its end


# --------------------------------------------------------------------------- checkpoints
def test_save_and_load_round_trip(tmp_path):
    model = tiny(vocab=12, dropout=0.3, wdrop=0.2, tie=True)
    with torch.no_grad():
        model.decoder.bias.uniform_(-1, 1)
    path = tmp_path / "sub" / "lm.pt"
    save_lm(path, model, CYCLE.vocab, {"corpus": "cycle", "perplexity": 1.5})
    assert path.exists() and not path.with_name("lm.pt.tmp").exists()
    loaded, vocab, ckpt = load_lm(path)
    assert vocab == CYCLE.vocab
    assert ckpt["meta"] == {"corpus": "cycle", "perplexity": 1.5}
    assert not loaded.training
    assert loaded.arch_args() == model.arch_args()
    assert loaded.decoder.weight is loaded.encoder.weight
    for (k, a), b in zip(model.state_dict().items(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    tokens = torch.randint(0, 12, (3, 6))
    model.eval()
    assert torch.equal(model(tokens)[0], loaded(tokens)[0])
    lengths = torch.tensor([6, 2, 4])
    assert torch.equal(
        model.last_log_probs(tokens, lengths), loaded.last_log_probs(tokens, lengths)
    )


class Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def write_truncated(path):
    save_lm(path, tiny(), [str(i) for i in range(11)], {})
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def write_random(path):
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())


def write_foreign(path):
    torch.save({"format": "x", "state_dict": {}}, path)


def write_classifier_like(path):
    torch.save({"format": "cvinterp-checkpoint-1", "state_dict": {}}, path)


def write_list(path):
    torch.save([torch.zeros(3)], path)


@pytest.mark.parametrize(
    "write,message",
    [
        (write_truncated, "corrupt, truncated or not a weights-only file"),
        (write_random, "corrupt, truncated or not a weights-only file"),
        (write_foreign, "is not a cvinterp language-model checkpoint"),
        (write_classifier_like, "is not a cvinterp language-model checkpoint"),
        (write_list, "is not a cvinterp language-model checkpoint"),
        (None, "does not exist"),
    ],
    ids=["truncated", "random-bytes", "foreign-format", "classifier-format", "list", "missing"],
)
def test_bad_checkpoints_raise_a_clear_error(tmp_path, write, message):
    path = tmp_path / "lm.pt"
    if write is not None:
        write(path)
    with pytest.raises(CheckpointError, match=message) as err:
        load_lm(path)
    assert str(path) in str(err.value)
    if "corrupt" in message or "exist" in message:
        assert "workflow" in str(err.value)  # says how to recreate it


@pytest.mark.parametrize("writer", ["pickle", "torch.save"])
def test_malicious_pickle_is_refused_not_run(tmp_path, writer):
    marker = tmp_path / "pwned"
    path = tmp_path / "lm.pt"
    if writer == "pickle":
        path.write_bytes(pickle.dumps(Evil(marker), protocol=2))
    else:
        torch.save(Evil(marker), path)
    with pytest.raises(CheckpointError, match="not a weights-only file"):
        load_lm(path)
    assert not marker.exists()


# --------------------------------------------------------------------------- data & evaluation
def test_batchify_cuts_contiguous_streams():
    ids = np.arange(23)
    data = batchify(ids, 4, CPU)
    assert data.shape == (4, 5) and data.dtype == torch.int64 and data.is_contiguous()
    for r in range(4):
        assert data[r].tolist() == list(range(5 * r, 5 * r + 5))
    assert batchify(np.arange(8), 4, CPU).shape == (4, 2)  # the shortest allowed
    assert batchify(list(range(9)), 1, CPU).tolist() == [list(range(9))]
    with pytest.raises(ValueError, match="cannot fill"):
        batchify(np.arange(7), 4, CPU)
    with pytest.raises(ValueError):
        batchify(np.arange(3), 5, CPU)


def naive_nll(model: AWDLSTM, ids) -> tuple[float, int]:
    """Summed next-token NLL over one stream, one token at a time with the state carried."""
    total, state = 0.0, None
    with torch.no_grad():
        for t in range(len(ids) - 1):
            logits, state, _, _ = model(torch.tensor([[int(ids[t])]]), state)
            total -= torch.log_softmax(logits[0, 0].double(), -1)[int(ids[t + 1])].item()
    return total, len(ids) - 1


@pytest.mark.parametrize("batch_size,bptt", [(1, 4), (3, 5), (2, 100)])
def test_evaluate_lm_equals_a_token_by_token_computation(batch_size, bptt):
    model = tiny(vocab=11, dropout=0.5, dropouti=0.5, wdrop=0.5).train()  # evaluate sets eval
    ids = np.random.default_rng(1).integers(0, 11, 47)
    got = evaluate_lm(model, ids, batch_size, bptt, CPU)
    assert not model.training
    assert got["perplexity"] == math.exp(got["loss"])
    n = len(ids) // batch_size
    assert got["tokens"] == batch_size * (n - 1)
    rows = [naive_nll(model, ids[r * n : (r + 1) * n]) for r in range(batch_size)]
    want = sum(t for t, _ in rows) / sum(c for _, c in rows)
    assert got["loss"] == pytest.approx(want, rel=1e-5)


def test_evaluate_lm_after_training(adam_full):
    model = adam_full[0]
    got = evaluate_lm(model, CYCLE.valid, 4, 10, CPU)
    assert math.isfinite(got["loss"]) and got["perplexity"] == math.exp(got["loss"])
    assert got["loss"] < math.log(V)
    assert got["loss"] == adam_full[1]["valid_loss"]  # what the metrics report


# --------------------------------------------------------------------------- training
def test_training_learns_a_deterministic_cycle(adam_full):
    model, metrics, _ = adam_full
    assert not model.training
    assert metrics["vocab_size"] == V
    assert metrics["valid_perplexity"] < 3  # chance: 12, a perfect model: 1
    assert metrics["test_perplexity"] < 3
    assert metrics["valid_perplexity"] == math.exp(metrics["valid_loss"])
    history = metrics["history"]
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert {h["optimizer"] for h in history} == {"adam"}
    assert history[-1]["valid_loss"] < history[0]["valid_loss"]
    # the returned weights are the best epoch's
    assert metrics["valid_loss"] == min(h["valid_loss"] for h in history)
    assert metrics["train_tokens_per_epoch"] == (1600 // 4 - 1) * 4
    assert metrics["valid_tokens"] == 4 * (320 // 4 - 1)
    assert metrics["test_tokens"] == 2 * (320 // 2 - 1)
    assert metrics["parameters"] == sum(p.numel() for p in model.parameters())


def test_same_seed_same_weights_other_seed_other_weights(adam_full):
    assert_same_run(run(), adam_full, train_loss=True)
    other, _ = run(seed=1)
    ref = adam_full[0].state_dict()
    assert any(not torch.equal(v, ref[k]) for k, v in other.state_dict().items())


def test_nt_asgd_switches_and_evaluates_the_averaged_weights(asgd_run):
    model, metrics, _, opts, after_step = asgd_run
    modes = [h["optimizer"] for h in metrics["history"]]
    assert modes[0] == "sgd" and modes[-1] == "asgd", modes
    assert modes.index("asgd") >= 2  # the switch follows a validation that got worse
    assert len(opts) == 1  # one switch, one ASGD optimizer from then on
    params = opts[0].param_groups[0]["params"]
    assert [p is q for p, q in zip(params, model.parameters(), strict=True)] == [True] * len(params)
    averaged, live = copy.deepcopy(model), copy.deepcopy(model)
    with torch.no_grad():
        pairs = zip(averaged.parameters(), live.parameters(), strict=True)
        for p, final, (a, w) in zip(params, after_step[-1], pairs, strict=True):
            a.copy_(opts[0].state[p]["ax"])
            w.copy_(final)
    last_valid = metrics["history"][-1]["valid_loss"]
    on_average = evaluate_lm(averaged, CYCLE.valid, 4, 10, CPU)["loss"]
    on_live = evaluate_lm(live, CYCLE.valid, 4, 10, CPU)["loss"]
    assert on_average == pytest.approx(last_valid, rel=1e-6)
    assert on_live != pytest.approx(last_valid, rel=1e-3)  # the test tells them apart
    # the best epoch is an averaged one here, and its averaged weights are what is returned
    best = min(range(len(modes)), key=lambda i: metrics["history"][i]["valid_loss"])
    if best == len(modes) - 1:
        for a, b in zip(model.parameters(), averaged.parameters(), strict=True):
            assert torch.equal(a, b)


def test_the_best_validation_epoch_is_returned_not_the_last():
    model, metrics = run(settings=NT_ASGD, epochs=2)  # SGD at lr 30 overshoots in epoch 2
    first, second = (h["valid_loss"] for h in metrics["history"])
    assert second > first
    assert metrics["valid_loss"] == first
    assert evaluate_lm(model, CYCLE.valid, 4, 10, CPU)["loss"] == first


def test_tokens_per_epoch_limits_each_epoch_but_every_stream_is_read(monkeypatch):
    spy = Spy(monkeypatch)
    _, metrics = run(epochs=2, tokens_per_epoch=102)
    assert metrics["train_tokens_per_epoch"] == (102 // 4) * 4
    data = batchify(CYCLE.train, 4, CPU)
    epochs = spy.epochs()
    assert len(epochs) == 2
    end = 102 // 4
    for e, windows in enumerate(epochs):
        read = torch.cat(windows, 1)
        assert end - 1 <= read.shape[1] <= end
        start = e * end  # each epoch continues where the previous one's window stopped
        assert torch.equal(read, data[:, start : start + read.shape[1]])
        assert [int(t) for t in read[:, 0]] == [
            int(CYCLE.train[r * 400 + start]) for r in range(4)
        ]  # stream r is the r-th chunk


# --------------------------------------------------------------------------- resuming
def test_interrupted_twice_mid_epoch_resumes_to_the_same_run(tmp_path, adam_full, monkeypatch):
    n1, n2, _ = adam_full[2].steps_per_epoch()
    assert n2 > 8
    path = tmp_path / "resume.pt"
    assert run(resume_path=path, stop_after_steps=7) == (None, None)
    state = saved(path)
    assert (state["epoch"], state["steps"]) == (0, 7) and state["pos"] > 0
    assert run(resume_path=path, stop_after_steps=n1) == (None, None)  # into epoch 2
    state = saved(path)
    assert (state["epoch"], state["steps"]) == (1, n1 + 7) and state["pos"] > 0
    assert_same_run(run(resume_path=path), adam_full)
    # a finished run's state gives the same result again without training
    spy = Spy(monkeypatch)
    assert_same_run(run(resume_path=path), adam_full)
    assert "T" not in spy.trace


def test_interrupted_after_the_last_step_of_an_epoch(tmp_path, adam_full):
    n1 = adam_full[2].steps_per_epoch()[0]
    path = tmp_path / "resume.pt"
    assert run(resume_path=path, stop_after_steps=n1) == (None, None)
    state = saved(path)
    assert state["epoch"] == 0 and not state["history"].strip("[]")  # not yet validated
    assert_same_run(run(resume_path=path), adam_full)


def test_killed_after_the_epoch_end_save(tmp_path, adam_full, monkeypatch):
    """A crash in the first step of epoch 2 leaves the state saved when epoch 1 ended."""
    n1 = adam_full[2].steps_per_epoch()[0]
    path = tmp_path / "resume.pt"
    with monkeypatch.context() as mp:
        Spy(mp, kill_at=n1 + 1)
        with pytest.raises(Killed):
            run(resume_path=path, checkpoint_seconds=0)  # a save is due at every chance
    state = saved(path)
    assert (state["epoch"], state["pos"], state["steps"]) == (1, 0, n1)
    assert_same_run(run(resume_path=path), adam_full)


def test_time_based_saves_resume_after_a_crash(tmp_path, adam_full, monkeypatch):
    n1 = adam_full[2].steps_per_epoch()[0]
    path = tmp_path / "resume.pt"
    with monkeypatch.context() as mp:
        Spy(mp, kill_at=n1 + 6)
        with pytest.raises(Killed):
            run(resume_path=path, checkpoint_seconds=0)
    state = saved(path)
    assert (state["epoch"], state["steps"]) == (1, n1 + 5) and state["pos"] > 0
    assert_same_run(run(resume_path=path, checkpoint_seconds=0), adam_full)


@pytest.mark.parametrize("where", ["mid-asgd-epoch", "before-the-switch"])
def test_nt_asgd_interrupted_resumes_to_the_same_run(tmp_path, asgd_run, where):
    model, metrics, spy = asgd_run[:3]
    steps = spy.steps_per_epoch()
    switch = [h["optimizer"] for h in metrics["history"]].index("asgd")
    stop = sum(steps[:switch]) + (steps[switch] // 2 if where == "mid-asgd-epoch" else 0)
    path = tmp_path / "resume.pt"
    assert run(settings=NT_ASGD, resume_path=path, stop_after_steps=stop) == (None, None)
    state = saved(path)
    assert state["mode"] == ("asgd" if where == "mid-asgd-epoch" else "sgd")
    assert_same_run(run(settings=NT_ASGD, resume_path=path), (model, metrics))


def test_state_of_other_settings_is_ignored(tmp_path, adam_full, capsys):
    n1 = adam_full[2].steps_per_epoch()[0]
    path = tmp_path / "resume.pt"
    assert run(resume_path=path, lr=0.02, stop_after_steps=n1 + 3) == (None, None)
    capsys.readouterr()
    assert_same_run(run(resume_path=path), adam_full, train_loss=True)
    assert "ignoring" in capsys.readouterr().out
    assert saved(path)["epoch"] == ADAM["epochs"]  # and the new run's state replaced it


@pytest.mark.parametrize("stop", ["mid-epoch", "epoch-end"])
def test_resumed_history_train_loss_equals_uninterrupted(tmp_path, adam_full, stop):
    n1 = adam_full[2].steps_per_epoch()[0]
    path = tmp_path / "resume.pt"
    run(resume_path=path, stop_after_steps=7 if stop == "mid-epoch" else n1)
    assert_same_run(run(resume_path=path), adam_full, train_loss=True)


def test_state_of_another_eval_batch_size_is_ignored(tmp_path, adam_full):
    n1 = adam_full[2].steps_per_epoch()[0]
    path = tmp_path / "resume.pt"
    run(resume_path=path, eval_batch_size=4, stop_after_steps=n1 + 3)
    resumed = run(resume_path=path, eval_batch_size=2)
    assert_same_run(resumed, run(eval_batch_size=2))


def test_truncated_resume_state_is_ignored_not_fatal(tmp_path, adam_full, capsys):
    path = tmp_path / "resume.pt"
    run(resume_path=path, stop_after_steps=3)
    path.write_bytes(path.read_bytes()[:100])  # a crash while writing (or a damaged disk)
    got = run(resume_path=path)
    assert "unreadable" in capsys.readouterr().out
    assert_same_run(got, adam_full, train_loss=True)


def awd_switch_epoch(losses: list[float], nonmono: int) -> int | None:
    """AWD-LSTM's rule, as its main.py applies it: after epoch i's validation, switch when more
    than `nonmono` earlier epochs exist and the loss is worse than the best of them, less the
    last `nonmono`."""
    for i, loss in enumerate(losses):
        earlier = losses[:i]
        if len(earlier) > nonmono and loss > min(earlier[:-nonmono]):
            return i
    return None


@pytest.mark.parametrize(
    ("losses", "nonmono"),
    [
        ([5.0, 4.0, 4.5, 4.6, 3.0, 2.0], 1),  # 4.5 > min([5.0]) -> no; 4.6 > min(5, 4) -> no
        ([5.0, 4.0, 4.5, 4.6, 4.7, 2.0], 2),
        ([5.0, 5.1, 5.2, 5.3, 5.4, 5.5], 1),
        ([5.0, 4.0, 3.0, 2.0, 1.0, 0.5], 1),
    ],
)
def test_nt_asgd_switches_when_awd_lstm_does(monkeypatch, losses, nonmono):
    scripted = iter(losses)

    def fake_evaluate(model, ids, batch_size, bptt, device):
        loss = next(scripted, 1.0)
        return {"loss": loss, "perplexity": math.exp(loss), "tokens": 1}

    monkeypatch.setattr(train_lm, "evaluate_lm", fake_evaluate)
    _, metrics = run(settings=NT_ASGD, epochs=len(losses), nonmono=nonmono, lr=0.1)
    modes = [h["optimizer"] for h in metrics["history"]]
    at = awd_switch_epoch(losses, nonmono)
    want = (
        ["sgd"] * len(losses)
        if at is None
        else ["sgd"] * (at + 1) + ["asgd"] * (len(losses) - at - 1)
    )
    assert modes == want
