"""How an LSTM language model uses its context (methods/context.py): every condition against a
naive reference (one context at a time, batch of one), the perturbations token by token."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cvinterp.methods.context import (
    PERTURBATIONS,
    Scorer,
    effective_context,
    full_context_loss,
    insensitive_boundary,
    perturb,
    restricted_loss,
    sample_targets,
    settled,
    windows,
)
from cvinterp.models.awd_lstm import AWDLSTM

EXACT = {"rtol": 0.0, "atol": 1e-12}


def small_lm(vocab: int, seed: int = 0, layers: int = 2, tie: bool = True) -> AWDLSTM:
    """A small dropout-free AWD-LSTM in float64, with embeddings large enough that the context
    matters visibly."""
    torch.manual_seed(seed)
    model = AWDLSTM(
        vocab, emb=8, hidden=16, layers=layers, tie=tie,
        dropout=0, dropouth=0, dropouti=0, dropoute=0, wdrop=0,
    )  # fmt: skip
    with torch.no_grad():
        model.encoder.weight.normal_(0.0, 1.0)
        if not tie:
            model.decoder.weight.normal_(0.0, 1.0)
    return model.double().eval()


def random_stream(vocab: int, n: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(vocab, (n,), generator=torch.Generator().manual_seed(seed))


def targets(n_tokens: int, n: int, history: int, seed: int = 0) -> torch.Tensor:
    return torch.as_tensor(sample_targets(n_tokens, n, history, seed))


@torch.no_grad()
def naive_nll(model: AWDLSTM, context: torch.Tensor, target: int) -> float:
    """One context alone (batch of one, unpadded) from a zero state."""
    logits = model(context[None])[0]
    return float(-torch.log_softmax(logits[0, -1], dim=-1)[target])


# --- context restriction and the full context -------------------------------------------------


def test_windows_are_the_tokens_right_before_each_target():
    got = windows(torch.tensor([5, 9, 3]), 3)
    assert torch.equal(got, torch.tensor([[2, 3, 4], [6, 7, 8], [0, 1, 2]]))
    assert windows(torch.tensor([7]), 1).tolist() == [[6]]


def test_restriction_is_moot_for_a_model_that_sees_only_the_last_token():
    """A one-layer LSTM with no recurrent weights and a forget gate shut hard: its prediction
    depends on the last token only, so every context size (and the full context) agree."""
    model = small_lm(30, seed=1, layers=1, tie=False)
    h = model.hidden
    with torch.no_grad():
        rnn = model.rnns[0]
        rnn.weight_hh_l0.zero_()
        rnn.bias_ih_l0[h : 2 * h] = -1e4  # gate order: input, forget, cell, output
        rnn.bias_hh_l0[h : 2 * h] = -1e4
    stream = random_stream(30, 300, seed=2)
    positions = targets(len(stream), 40, 50, seed=3)
    scorer = Scorer(model, stream, batch_size=7)
    full = full_context_loss(model, stream, positions)
    assert full.dtype == torch.float64 and full.shape == (40,)
    for k in (1, 2, 5, 50):
        torch.testing.assert_close(restricted_loss(scorer, positions, k), full, **EXACT)

    # control: an ordinary model does use more than the last token
    model = small_lm(30, seed=1)
    scorer = Scorer(model, stream, batch_size=7)
    one, fifty = restricted_loss(scorer, positions, 1), restricted_loss(scorer, positions, 50)
    assert (one - fifty).abs().max() > 1e-3


@pytest.mark.parametrize("k", [1, 3, 17])
def test_restricted_loss_equals_each_window_scored_alone(k):
    model = small_lm(50, seed=4)
    stream = random_stream(50, 400, seed=5)
    positions = targets(len(stream), 30, 17, seed=6)
    got = restricted_loss(Scorer(model, stream, batch_size=7), positions, k)
    want = [naive_nll(model, stream[t - k : t], int(stream[t])) for t in positions.tolist()]
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float64), **EXACT)


def test_full_context_loss_equals_the_whole_prefix_read_at_once():
    model = small_lm(50, seed=7)
    stream = random_stream(50, 400, seed=8)
    positions = torch.tensor([1, 2, 13, 14, 26, 100, 257, 399])
    got = full_context_loss(model, stream, positions)
    want = [naive_nll(model, stream[:t], int(stream[t])) for t in positions.tolist()]
    torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float64), **EXACT)


def test_stream_hidden_carries_the_state_across_chunks():
    model = small_lm(50, seed=9)
    stream = random_stream(50, 400, seed=10)
    keep = torch.tensor([0, 12, 13, 25, 26, 38, 39, 100, 250, 399])
    whole = model.stream_hidden(stream, keep, chunk=10_000)
    chunked = model.stream_hidden(stream, keep, chunk=13)
    assert whole.shape == (len(keep), model.emb)
    torch.testing.assert_close(chunked, whole, **EXACT)
    with torch.no_grad():
        direct = model(stream[None])[2][0, keep]  # the last layer's output, all in one pass
    torch.testing.assert_close(whole, direct, **EXACT)


def test_packed_contexts_of_different_lengths_score_as_if_alone():
    model = small_lm(40, seed=11)
    gen = torch.Generator().manual_seed(12)
    lengths = torch.tensor([5, 1, 9, 3, 9, 2, 7, 4])
    # padding is garbage, not 0: it must be ignored either way
    contexts = torch.randint(1, 40, (len(lengths), 12), generator=gen)
    tgt = torch.randint(40, (len(lengths),), generator=gen)
    got = Scorer(model, torch.zeros(1, dtype=torch.long), batch_size=3).nll(contexts, tgt, lengths)
    want = [naive_nll(model, contexts[i, :n], int(tgt[i])) for i, n in enumerate(lengths.tolist())]
    torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float64), **EXACT)

    # without lengths every context is its full width
    full = Scorer(model, torch.zeros(1, dtype=torch.long), batch_size=3).nll(contexts, tgt)
    want = [naive_nll(model, contexts[i], int(tgt[i])) for i in range(len(tgt))]
    torch.testing.assert_close(full, torch.tensor(want, dtype=torch.float64), **EXACT)


# --- perturbations ------------------------------------------------------------------------------

L = 30
N_TOKENS = 600


@pytest.fixture(scope="module")
def setting():
    """A stream of distinct tokens (so a token's stream position is known from its id),
    windows of L tokens before 60 targets, and random function / content masks over the stream
    positions (a token's class is that of its tag where it stands)."""
    stream = torch.randperm(N_TOKENS, generator=torch.Generator().manual_seed(13))
    positions = targets(N_TOKENS, 60, L, seed=14)
    index = windows(positions, L)
    cls = torch.randint(3, (N_TOKENS,), generator=torch.Generator().manual_seed(15))
    return stream, positions, index, cls == 0, cls == 1


def run(kind, setting, boundary, seed=0, span=4):
    stream, _, index, function, content = setting
    return perturb(
        kind, index, stream, boundary, generator=torch.Generator().manual_seed(seed),
        span=span, function=function, content=content,
    )  # fmt: skip


def authors_span(length: int, boundary: int, span: int) -> tuple[int, int]:
    """The window columns the authors' shuffle_within_spans / reverse_within_spans move:
    new_ex[-boundary - span : -boundary] (perturbations.py), a Python slice of the window."""
    cols = list(range(length))[-boundary - span : -boundary]
    return (cols[0], cols[-1] + 1) if cols else (0, 0)


def test_authors_span_helper():
    assert authors_span(300, 1, 20) == (279, 299)  # 20 tokens moved at b = 1, not 299
    assert authors_span(300, 290, 20) == (0, 10)  # cut at the window's start
    assert authors_span(30, 7, 4) == (19, 23)


@pytest.mark.parametrize("kind", PERTURBATIONS)
@pytest.mark.parametrize("boundary", [L, L + 5])
def test_a_boundary_at_or_beyond_the_window_perturbs_nothing(setting, kind, boundary):
    stream, _, index, _, _ = setting
    tokens, lengths = run(kind, setting, boundary)
    assert torch.equal(tokens, stream[index]) and lengths is None


def test_an_unknown_perturbation_is_refused(setting):
    with pytest.raises(ValueError, match="unknown perturbation 'shuffle'"):
        run("shuffle", setting, 1)


@pytest.mark.parametrize("kind", [k for k in PERTURBATIONS if not k.startswith("drop")])
@pytest.mark.parametrize("boundary", [1, 7, L - 1])
def test_fixed_length_perturbations_leave_the_near_part_and_the_inputs(setting, kind, boundary):
    stream, _, index, _, _ = setting
    before_stream, before_index = stream.clone(), index.clone()
    orig = stream[index]
    tokens, lengths = run(kind, setting, boundary)
    assert lengths is None and tokens.shape == orig.shape and tokens.dtype == orig.dtype
    assert torch.equal(tokens[:, L - boundary :], orig[:, L - boundary :])
    assert torch.equal(stream, before_stream) and torch.equal(index, before_index)
    again, _ = run(kind, setting, boundary)
    assert torch.equal(tokens, again)  # the same generator seed draws the same


@pytest.mark.parametrize("boundary", [1, 7, L - 1])
def test_shuffle_global_permutes_the_far_part(setting, boundary):
    stream, _, index, _, _ = setting
    orig, far = stream[index], L - boundary
    tokens, _ = run("shuffle_global", setting, boundary)
    assert torch.equal(tokens[:, :far].sort(1).values, orig[:, :far].sort(1).values)
    if far >= 7:  # 60 rows: every far column moves in some row
        assert (tokens[:, :far] != orig[:, :far]).any(0).all()
        other, _ = run("shuffle_global", setting, boundary, seed=1)
        assert not torch.equal(tokens, other)


@pytest.mark.parametrize("boundary", [1, 7, L - 1])
def test_reverse_global_reverses_the_far_part(setting, boundary):
    stream, _, index, _, _ = setting
    orig, far = stream[index], L - boundary
    tokens, _ = run("reverse_global", setting, boundary)
    assert torch.equal(tokens[:, :far], orig[:, :far].flip(1))


@pytest.mark.parametrize(
    "boundary,span",
    [(1, 4), (7, 4), (7, 5), (10, 5), (1, 7), (L - 1, 4), (26, 3), (1, 50), (20, 20)],
)
def test_local_perturbations_move_only_the_span_just_beyond_the_boundary(setting, boundary, span):
    """Khandelwal et al.'s perturbations.py: only [L - b - span, L - b) is shuffled or
    reversed; every other token of the window stays where it is."""
    stream, _, index, _, _ = setting
    orig = stream[index]
    lo, hi = authors_span(L, boundary, span)
    shuffled, _ = run("shuffle_local", setting, boundary, span=span)
    reversed_, _ = run("reverse_local", setting, boundary, span=span)
    for got in (shuffled, reversed_):
        assert torch.equal(got[:, :lo], orig[:, :lo]) and torch.equal(got[:, hi:], orig[:, hi:])
    assert torch.equal(reversed_[:, lo:hi], orig[:, lo:hi].flip(1))
    assert torch.equal(shuffled[:, lo:hi].sort(1).values, orig[:, lo:hi].sort(1).values)
    moved = (shuffled[:, lo:hi] != orig[:, lo:hi]).any(0)  # 60 rows: every column moves
    assert moved.all() if hi - lo > 1 else not moved.any()


@pytest.mark.parametrize("kind", ["drop_function", "drop_content"])
@pytest.mark.parametrize("boundary", [1, 7, L - 1])
def test_drops_remove_exactly_the_far_words_of_their_class(setting, kind, boundary):
    stream, _, index, function, content = setting
    mask = function if kind == "drop_function" else content
    orig, far = stream[index], L - boundary
    tokens, lengths = run(kind, setting, boundary)
    assert tokens.shape == orig.shape and lengths.shape == (len(orig),)
    for i, (row, at) in enumerate(zip(orig.tolist(), index.tolist(), strict=True)):
        # the authors' drop_pos: a token goes by the tag at its own position
        kept = [t for t, j in zip(row[:far], at[:far], strict=True) if not mask[j]] + row[far:]
        n = len(kept)
        assert int(lengths[i]) == n
        assert tokens[i].tolist() == kept + [0] * (L - n)
        assert tokens[i, n - boundary : n].tolist() == row[far:]  # the near part, intact
    if far >= 7:
        assert int(lengths.min()) < L - 2 and int(lengths.max()) > boundary


def test_drops_remove_nothing_when_no_word_is_of_the_class(setting):
    stream, _, index, _, _ = setting
    none = torch.zeros(N_TOKENS, dtype=torch.bool)
    tokens, lengths = perturb(
        "drop_content", index, stream, 3, generator=torch.Generator(),
        function=none, content=none,
    )  # fmt: skip
    assert torch.equal(tokens, stream[index]) and torch.equal(lengths, torch.full((60,), L))


def donor_ok(stream, tokens, ws, far, where):
    """The far part is the run stream[s:s+far] for an s clear of the window and the target."""
    s = int(where[tokens[0]])  # the stream holds distinct tokens
    assert s + far <= len(stream)
    assert torch.equal(tokens[:far], stream[s : s + far])
    return s + far <= ws or s >= ws + L + 1


@pytest.mark.parametrize("boundary", [1, 7, L - 1])
def test_replace_takes_a_run_of_text_from_elsewhere(setting, boundary):
    stream, _, index, _, _ = setting
    where = stream.argsort()
    far = L - boundary
    for seed in range(3):
        tokens, _ = run("replace", setting, boundary, seed=seed)
        for i in range(len(index)):
            assert donor_ok(stream, tokens[i], int(index[i, 0]), far, where)
    other, _ = run("replace", setting, boundary, seed=1)
    assert not torch.equal(tokens, other)  # another seed, other text


def test_replace_in_a_split_just_long_enough():
    """Most draws collide with the window here: every row must still be clear of it."""
    far = L - 1
    n = far + 2 * (L + 1)
    stream = torch.randperm(n, generator=torch.Generator().manual_seed(16))
    where = stream.argsort()
    index = windows(torch.arange(L, n), L)  # every possible target
    for seed in range(20):
        tokens, _ = perturb(
            "replace", index, stream, 1, generator=torch.Generator().manual_seed(seed)
        )
        for i in range(len(index)):
            assert donor_ok(stream, tokens[i], int(index[i, 0]), far, where), (seed, i)
    short = windows(torch.arange(L, n - 1), L)  # one token less
    with pytest.raises(ValueError, match="too short to draw replacement text"):
        perturb("replace", short, stream[:-1], 1, generator=torch.Generator())


# --- word classes, targets, the summary numbers ------------------------------------------------


def test_sample_targets():
    got = sample_targets(1000, 50, 100, seed=3)
    assert got.shape == (50,)
    assert np.all(np.diff(got) > 0)  # sorted and unique
    assert got.min() >= 100 and got.max() < 1000
    assert np.array_equal(got, sample_targets(1000, 50, 100, seed=3))
    assert not np.array_equal(got, sample_targets(1000, 50, 100, seed=4))
    # more targets asked for than there are: all of them
    assert sample_targets(105, 50, 100, seed=0).tolist() == [100, 101, 102, 103, 104]
    assert sample_targets(101, 5, 100, seed=0).tolist() == [100]
    for n_tokens in (100, 40):
        with pytest.raises(ValueError, match="too few for targets with 100 tokens of history"):
            sample_targets(n_tokens, 5, 100, seed=0)


def test_effective_context():
    sizes = [1, 2, 5, 10, 20]
    # dips within the tolerance at 2, rises again at 5: only from 10 on are all within
    assert effective_context(sizes, [5.0, 4.03, 4.1, 4.02, 4.0], 4.0) == 10
    assert effective_context(sizes, [5.0, 4.03, 4.03, 4.02, 4.0], 4.0) == 2
    assert effective_context(sizes, [4.0, 4.0, 4.0, 4.0, 4.0], 4.0) == 1
    # never within, or not within at the largest size
    assert effective_context(sizes, [5.0, 4.5, 4.3, 4.2, 4.1], 4.0) is None
    assert effective_context(sizes, [4.0, 4.0, 4.0, 4.0, 4.5], 4.0) is None
    # the tolerance is relative to |full|, and inclusive
    assert effective_context([1, 2], [101.5, 100.9], 100.0) == 2
    assert effective_context([1, 2], [0.52, 0.504], 0.5) == 2
    assert effective_context([1, 2, 3], [-1.95, -1.985, -1.99], -2.0) == 2
    assert effective_context([1, 2], [6.0, 5.0], 4.0, tolerance=0.25) == 2
    # within means either side: a loss far below the full-context loss has not settled
    assert effective_context([1, 2], [3.0, 3.5], 4.0) is None
    assert effective_context([1, 2], [3.0, 3.97], 4.0) == 2


def test_insensitive_boundary():
    bounds = [1, 5, 10, 20]
    assert insensitive_boundary(bounds, [0.5, 0.03, 0.05, 0.01], 4.0) == 20
    assert insensitive_boundary(bounds, [0.5, 0.01, 0.0, -0.01], 4.0) == 5
    assert insensitive_boundary(bounds, [0.5, 0.2, 0.1, 0.05], 4.0) is None
    assert insensitive_boundary(bounds, [0.5, 0.03, 0.05, 0.01], -4.0) == 20
    assert insensitive_boundary(bounds, [0.5, 0.2, 0.1, 0.05], 4.0, tolerance=0.03) == 10
    assert insensitive_boundary(bounds, [0.5, -0.2, 0.01, -0.01], 4.0) == 10  # a drop counts too


def test_drops_go_by_the_tag_at_each_position_not_by_the_word():
    """The same word is dropped where its tag is of the class and kept elsewhere (the authors
    tag tokens in context: "that" is a determiner in one place, a complementiser in another)."""
    stream = torch.tensor([5, 6, 5, 6, 5, 6, 7, 8])
    function = torch.tensor([True, False, False, False, True, False, False, False])
    index = torch.arange(8)[None]
    tokens, lengths = perturb(
        "drop_function", index, stream, 2, generator=torch.Generator(),
        function=function, content=~function,
    )  # fmt: skip
    assert tokens[0, : int(lengths[0])].tolist() == [6, 5, 6, 6, 7, 8]


def test_drops_refuse_masks_over_the_vocabulary():
    stream = torch.arange(10) % 4
    with pytest.raises(ValueError, match="mask over the 10 stream positions"):
        perturb(
            "drop_content", torch.arange(10)[None], stream, 2, generator=torch.Generator(),
            content=torch.ones(4, dtype=torch.bool),
        )  # fmt: skip


@pytest.mark.parametrize("boundary", [1, 7, L - 1])
def test_replace_draws_a_run_of_the_donor_text(setting, boundary):
    """The authors' replace_with_rand_seq: the far part becomes corpus.train[r : r + L - b]."""
    stream, _, index, _, _ = setting
    donor = 1000 + torch.arange(500)  # other text: ids that do not occur in the stream
    far = L - boundary
    orig = stream[index]
    tokens, lengths = perturb(
        "replace", index, stream, boundary, generator=torch.Generator().manual_seed(3),
        donor=donor,
    )  # fmt: skip
    assert lengths is None and torch.equal(tokens[:, far:], orig[:, far:])
    starts = tokens[:, 0] - 1000
    assert (starts >= 0).all() and (starts + far <= 500).all()
    assert torch.equal(tokens[:, :far], donor[starts[:, None] + torch.arange(far)])
    assert len(set(starts.tolist())) > 1
    with pytest.raises(ValueError, match="too few to replace"):
        perturb("replace", index, stream, 1, generator=torch.Generator(), donor=donor[: L - 2])


def test_settled_takes_one_curve_per_column_and_one_tolerance_in_nats():
    sizes = [1, 10, 100]
    curves = np.array([[0.5, 0.5, 0.5, 0.0], [0.03, 0.05, 0.5, 0.0], [0.0, 0.0, 0.5, 0.0]])
    assert settled(sizes, curves, 0.04).tolist() == [10, 100, np.inf, 1]
    # a tolerance per column (each resample's own), and a drop counts as much as a rise
    assert settled(sizes, -curves, [0.04, 0.06, 0.6, 0.04]).tolist() == [10, 10, 1, 1]
