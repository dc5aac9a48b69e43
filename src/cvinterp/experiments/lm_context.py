"""lm_context: how an LSTM language model uses its context (Khandelwal et al. 2018). The same
targets of a held-out split (the validation split by default, as the authors analyse) are scored
with the context restricted to the last k tokens and with the context beyond a boundary
shuffled, reversed, thinned of function or content words (by part-of-speech tag), or replaced
by training text (every condition of `cvinterp.methods.context`); frequent vs rare and content
vs function targets; one figure per model in the style of the paper's."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from cvinterp import figures as fig
from cvinterp import stats
from cvinterp.data import DataError, corpus_of
from cvinterp.data import pos as postags
from cvinterp.experiments.common import Computed, Declaration, Model, Probe
from cvinterp.methods import context as khandelwal
from cvinterp.models import CheckpointError
from cvinterp.models.awd_lstm import load_lm

#: Target groups with their own curves.
GROUPS = ("frequent", "rare", "function", "content")


def _check(settings: dict) -> None:
    too_far = [b for b in settings["boundaries"] if b >= settings["perturb_context"]]
    if too_far:
        raise ValueError(
            f"config key 'experiments.lm_context.boundaries': {too_far} leave nothing to perturb "
            f"in a perturb_context of {settings['perturb_context']} tokens (each must be smaller)"
        )


DECLARATION = Declaration(
    training_metrics=lambda settings: list(settings["models"]),
    language_models=True,
    check=_check,
    runtime=(60, 120),
)


def _group_masks(
    corpus, ids: np.ndarray, at: np.ndarray, frequent: int, rare: int, function, content
) -> dict:
    """Target groups: by the target word's training count, and by its tag's word class."""
    count = corpus.counts[ids[at]]
    return {
        "frequent": count > frequent,
        "rare": count < rare,
        "function": function[at],
        "content": content[at],
    }


def _mean_se(x: np.ndarray) -> tuple[float, float]:
    """Mean and standard error (0 for fewer than two values)."""
    if len(x) == 0:
        return float("nan"), float("nan")
    se = float(x.std(ddof=1) / math.sqrt(len(x))) if len(x) > 1 else 0.0
    return float(x.mean()), se


def context_of_model(
    name: str,
    checkpoint: str,
    spec: dict,
    *,
    corpus_dir: str | None,
    austen_dir: str | None,
    tags_dir: str | None,
    split: str,
    targets: int,
    sizes: list[int],
    boundaries: list[int],
    perturb_context: int,
    span: int,
    perturbations: list[str],
    frequent_count: int,
    rare_count: int,
    tolerance: float,
    batch_size: int,
    seed: int,
    dev: torch.device,
) -> dict:
    """Every context condition of one model on the same targets of `split`."""
    model, vocab, _ = load_lm(checkpoint, dev)
    corpus = corpus_of(spec, corpus_dir, austen_dir)
    if list(corpus.vocab) != list(vocab):
        raise CheckpointError(
            f"{checkpoint} was trained on another vocabulary than the {spec['corpus']} corpus "
            f"now gives: rerun its training (snakemake --forcerun language_model)"
        )
    ids = getattr(corpus, split)
    history = max(max(sizes), perturb_context)
    try:
        pos_np = khandelwal.sample_targets(len(ids), targets, history, seed)
    except ValueError as err:
        raise DataError(f"{name}, {split} split: {err}") from err
    stream = torch.as_tensor(np.asarray(ids), dtype=torch.int64, device=dev)
    positions = torch.as_tensor(pos_np, device=dev)
    tags = postags.split_tags(corpus, spec["corpus"], split, tags_dir)
    function, content = postags.word_classes(tags)
    groups = _group_masks(
        corpus, np.asarray(ids), pos_np, frequent_count, rare_count, function, content
    )
    donor = torch.as_tensor(np.asarray(corpus.train), dtype=torch.int64, device=dev)
    scorer = khandelwal.Scorer(model, stream, batch_size)
    t0, scored, tokens = time.perf_counter(), 0, 0
    full = khandelwal.full_context_loss(model, stream, positions).cpu().numpy()
    full_mean = float(full.mean())

    restricted = []
    for k in tqdm(sizes, desc=f"{name}: context restriction", mininterval=5):
        restricted.append(khandelwal.restricted_loss(scorer, positions, k).cpu().numpy())
        scored, tokens = scored + len(pos_np), tokens + len(pos_np) * k
    restricted = np.stack(restricted)  # (sizes, targets)
    increase = restricted - full[None]

    index = khandelwal.windows(positions, perturb_context)
    if perturb_context in sizes:  # the unperturbed window is one of the restricted contexts
        base = restricted[sizes.index(perturb_context)]
    else:
        base = scorer.at(index, positions).cpu().numpy()
        scored, tokens = scored + len(pos_np), tokens + len(pos_np) * perturb_context
    word_masks = [torch.as_tensor(function, device=dev), torch.as_tensor(content, device=dev)]
    perturbed = {}
    steps = [(kind, b) for kind in perturbations for b in boundaries]
    for kind, b in tqdm(steps, desc=f"{name}: perturbations", mininterval=5):
        # each condition its own draws: adding a perturbation to the config changes no other
        code = khandelwal.PERTURBATIONS.index(kind)
        gen = torch.Generator().manual_seed(seed * 1_000_003 + code * 10_007 + b)
        try:
            ctx, lengths = khandelwal.perturb(
                kind,
                index,
                stream,
                b,
                generator=gen,
                span=span,
                function=word_masks[0],
                content=word_masks[1],
                donor=donor,
            )
        except ValueError as err:  # a split too short to draw replacement text from
            raise DataError(f"{name}, {split} split, {kind} at boundary {b}: {err}") from err
        loss = scorer.nll(ctx, stream[positions], lengths).cpu().numpy()
        perturbed.setdefault(kind, []).append(loss - base)
        scored += len(pos_np)
        tokens += int(lengths.sum()) if lengths is not None else len(pos_np) * perturb_context
    seconds = time.perf_counter() - t0

    def curve(rows: np.ndarray, mask: np.ndarray | None = None) -> tuple[list, list]:
        stats = [_mean_se(r if mask is None else r[mask]) for r in rows]
        return [m for m, _ in stats], [s for _, s in stats]

    inc, inc_se = curve(increase)
    result = {
        "corpus": spec["corpus"],
        "split": split,
        "targets": len(pos_np),
        "history_per_target": history,
        "tags": {
            "source": postags.tag_source(spec["corpus"]),
            "function_tokens": int(function.sum()),
            "content_tokens": int(content.sum()),
            "other_tokens": int(len(tags) - function.sum() - content.sum()),
        },
        "full_context_loss": full_mean,
        "full_context_perplexity": math.exp(full_mean),
        "restriction": {
            "sizes": list(sizes),
            "loss": restricted.mean(1).tolist(),
            "increase": inc,
            "increase_se": inc_se,
            "relative_increase": [d / full_mean for d in inc],
        },
        "effective_context": {
            "all": khandelwal.effective_context(
                sizes, restricted.mean(1).tolist(), full_mean, tolerance
            )
        },
        "groups": {},
        "perturbation": {
            "context": perturb_context,
            "span": span,
            "boundaries": list(boundaries),
            "base_loss": float(base.mean()),
            "increase": {},
            "increase_se": {},
        },
        "insensitive_beyond": {},
        "speed": {
            "device": str(dev),
            "batch_size": batch_size,
            "targets_scored": scored,
            "context_tokens": tokens,
            "seconds": round(seconds, 2),
            "targets_per_second": round(scored / seconds, 1),
            "context_tokens_per_second": round(tokens / seconds),
        },
    }
    for kind, rows in perturbed.items():
        m, s = curve(np.stack(rows))
        result["perturbation"]["increase"][kind] = m
        result["perturbation"]["increase_se"][kind] = s
        result["insensitive_beyond"][kind] = khandelwal.insensitive_boundary(
            boundaries, m, full_mean, tolerance
        )
    for g, mask in groups.items():
        if not mask.any():
            result["groups"][g] = {"n": 0}
            result["effective_context"][g] = None
            continue
        g_full = float(full[mask].mean())
        m, s = curve(increase, mask)
        result["groups"][g] = {
            "n": int(mask.sum()),
            "full_context_loss": g_full,
            "increase": m,
            "increase_se": s,
            "perturbation_increase": {
                kind: curve(np.stack(rows), mask)[0] for kind, rows in perturbed.items()
            },
        }
        # one tolerance for every group, in nats: `tolerance` of all targets' full-context
        # loss (1% of each group's own loss gave content targets, of twice the loss, twice
        # the slack of function targets)
        result["effective_context"][g] = _as_int(
            khandelwal.settled(sizes, increase[:, mask].mean(1), tolerance * full_mean)
        )
    # per target, for the claims' bootstrap over targets (not written to the metrics)
    result["per_target"] = {
        "full": full,
        "increase": increase,
        "perturbation": {kind: np.stack(rows) for kind, rows in perturbed.items()},
        "groups": groups,
    }
    return result


def _as_int(k) -> int | None:
    """A settled size as the metrics store it: None where it never settles on the grid."""
    k = float(k)
    return None if math.isinf(k) else int(k)


def compute(
    models: dict[str, Model],
    *,
    split: str,
    targets: int,
    sizes: list[int],
    boundaries: list[int],
    perturb_context: int,
    span: int,
    perturbations: list[str],
    frequent_count: int,
    rare_count: int,
    tolerance: float,
    batch_size: int,
    probe: Probe,
    device,
) -> Computed:
    """Every context condition of every model on the same targets of `split`, and the models'
    training metrics (their perplexities are claims too)."""
    sizes, boundaries = sorted(set(sizes)), sorted(set(boundaries))
    results, trained, losses = {}, {}, {}
    for name, model in models.items():
        results[name] = context_of_model(
            name,
            model.checkpoint,
            model.spec,
            corpus_dir=model.data.get("corpus_dir"),
            austen_dir=model.data.get("austen_dir"),
            tags_dir=model.data.get("tags_dir"),
            split=split,
            targets=targets,
            sizes=sizes,
            boundaries=boundaries,
            perturb_context=perturb_context,
            span=span,
            perturbations=perturbations,
            frequent_count=frequent_count,
            rare_count=rare_count,
            tolerance=tolerance,
            batch_size=batch_size,
            seed=probe.seed,
            dev=device,
        )
        losses[name] = results[name].pop("per_target")
        trained[name] = json.loads(Path(model.metrics).read_text())
        r = results[name]
        print(
            f"{name}: full-context loss {r['full_context_loss']:.3f}, effective context "
            f"{r['effective_context']}, {r['speed']['targets_per_second']:.0f} targets/s"
        )
    metrics = {
        "models": results,
        "trained": {n: {k: v for k, v in t.items() if k != "history"} for n, t in trained.items()},
        "settings": {
            "split": split,
            "targets": targets,
            "sizes": sizes,
            "boundaries": boundaries,
            "perturb_context": perturb_context,
            "span": span,
            "tolerance": tolerance,
            "frequent_count": frequent_count,
            "rare_count": rare_count,
        },
    }
    return Computed(metrics, {"trained": trained, "losses": losses, "seed": probe.seed})


def figures(result: Computed, figure_dir) -> None:
    tolerance = result.metrics["settings"]["tolerance"]
    for name, r in result.metrics["models"].items():
        plot_context(name, r, tolerance, figure_dir / f"{name}.png")


def plot_context(name: str, r: dict, tolerance: float, path: str | Path) -> None:
    """Four panels: restriction overall and by target type; word order; dropped/replaced words."""
    import matplotlib.pyplot as plt

    f, axes = plt.subplots(2, 2, figsize=(11, 8))
    full = r["full_context_loss"]
    rs = r["restriction"]
    eff = r["effective_context"]

    def band(ax, x, m, s, label, style="-"):
        m, s = np.asarray(m), np.asarray(s)
        (line,) = ax.plot(x, m, style, marker="o", ms=3, label=label)
        ax.fill_between(x, m - 1.96 * s, m + 1.96 * s, color=line.get_color(), alpha=0.15)

    def finish(ax, title, xlabel, ref, which="the full-context loss"):
        ax.axhline(0, color="k", lw=0.6)
        ax.axhline(
            tolerance * ref, color="grey", ls="--", lw=0.8, label=f"{tolerance:.0%} of {which}"
        )
        ax.set_xscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("increase in loss (nats)")
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=7)

    ax = axes[0, 0]
    band(ax, rs["sizes"], rs["increase"], rs["increase_se"], f"all targets (n={r['targets']})")
    if eff["all"] is not None:
        ax.axvline(eff["all"], color="C3", ls=":", label=f"effective context {eff['all']}")
    finish(ax, "context restriction: last k tokens vs the full context", "context size k", full)

    ax = axes[0, 1]
    for g, style in zip(GROUPS, ("-", "--", "-", "--"), strict=True):
        gr = r["groups"][g]
        if gr["n"]:
            label = f"{g} targets (n={gr['n']}, effective {eff[g] or 'not reached'})"
            band(ax, rs["sizes"], gr["increase"], gr["increase_se"], label, style)
    finish(
        ax,
        "context restriction by target type (each against its own full-context loss)",
        "context size k",
        full,
        "all targets' loss",
    )

    pt = r["perturbation"]
    for ax, kinds, title in (
        (
            axes[1, 0],
            ("shuffle_local", "reverse_local", "shuffle_global", "reverse_global"),
            f"word order: the {pt['span']} tokens just beyond the boundary (local)\nor all "
            "beyond it (global)",
        ),
        (
            axes[1, 1],
            ("drop_function", "drop_content", "replace"),
            "words beyond the boundary dropped or replaced by training text\n"
            f"(word classes by part-of-speech tag: {r['tags']['source']})",
        ),
    ):
        for kind in kinds:
            if kind in pt["increase"]:
                band(ax, pt["boundaries"], pt["increase"][kind], pt["increase_se"][kind], kind)
        finish(ax, title, f"boundary (tokens kept intact, of {pt['context']})", full)
    f.suptitle(
        f"{name} ({r['corpus']}, {r['split']} split, {r['targets']} targets, full-context "
        f"perplexity {r['full_context_perplexity']:.1f}) — after Khandelwal et al. 2018",
        fontsize=10,
    )
    f.tight_layout()
    fig.save(f, path)


def claims(result: Computed) -> dict:
    return context_claims(
        result.metrics["models"],
        result.data["losses"],
        result.metrics["settings"],
        result.data["trained"],
        seed=result.data.get("seed", 0),
    )


# --- claims: every value with a 95% interval bootstrapped over the targets ---------------------

#: Boundaries from which on the paper calls the context far: word order is ignored beyond about
#: 50 tokens and only content words matter beyond 20 (Sec. 5, Fig. 3-5).
FAR_ORDER, FAR_WORDS = 50, 20


def _weights(n: int, seed: int) -> np.ndarray:
    """(resamples, n) bootstrap counts of n targets: each resample draws n targets with
    replacement (one draw for every quantity of a model, so they stay paired)."""
    rng = np.random.default_rng(seed)
    return rng.multinomial(n, np.full(n, 1.0 / n), size=stats.N_RESAMPLES).astype(np.float64)


def _weighted_means(rows: np.ndarray, w: np.ndarray, mask: np.ndarray | None = None):
    """Means of the rows (sizes, targets) under each resample's counts w (R, targets): (sizes,
    R); NaN for a resample that drew no target of `mask`."""
    if mask is not None:
        rows, w = rows[:, mask], w[:, mask]
    with np.errstate(invalid="ignore", divide="ignore"):
        return (rows @ w.T) / w.sum(1)[None]


def _grid_interval(value: float, samples: np.ndarray, floor: float) -> tuple[float, float]:
    """95% percentile interval of a statistic that takes grid values (inf: beyond the grid),
    without interpolating between grid values; an end beyond the grid is at least `floor`."""
    samples = np.asarray(samples, dtype=np.float64)
    samples = samples[~np.isnan(samples)]
    if len(samples) == 0:
        return (floor if math.isinf(value) else value), value
    lo = float(np.quantile(samples, 0.025, method="lower"))
    hi = float(np.quantile(samples, 0.975, method="higher"))
    lo, hi = min(lo, value), max(hi, value)
    return (floor if math.isinf(lo) else lo), hi


def _settled_with_interval(grid, rows, full, tolerance, w, mask=None):
    """The settled size of the mean curve (rows: per-target increases (grid, targets)) with the
    tolerance `tolerance` of all targets' full-context loss, and its bootstrap samples."""
    sel = slice(None) if mask is None else mask
    value = float(khandelwal.settled(grid, rows[:, sel].mean(1), tolerance * full.mean()))
    tol = tolerance * (w @ full) / w.sum(1)
    means = _weighted_means(rows, w, mask)
    samples = khandelwal.settled(grid, means, tol)
    return value, np.where(np.isnan(means).any(0), np.nan, samples)


def _censored_ratio(a, b, top: float):
    """a / b of settled sizes, a never-settling one (inf) taken at the grid's top `top`: a
    bound on the ratio on the side of 1 (so never a spurious pass of 'more than 1'); both
    beyond the grid: 1 (no order between them)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    both = np.isinf(a) & np.isinf(b)
    r = np.minimum(a, top) / np.minimum(b, top)
    return np.where(both, 1.0, r)


#: Random deals of the targets into two groups of the real groups' sizes: the null of a ratio of
#: settled sizes (1000: its 95% interval from 25 deals on either side).
N_PERMUTATIONS = 1000


def _dealt_ratio_null(grid, rows, tol_nats, a_mask, b_mask, seed, n=N_PERMUTATIONS):
    """The ratio of settled sizes (censored as `_censored_ratio`) of two groups of the sizes of
    `a_mask` and `b_mask` dealt at random from their targets together, over `n` seeded deals:
    its median and central 95% interval. A smaller or noisier group settles later by chance
    alone (its mean curve strays beyond the tolerance at some large size), so the ratio of two
    groups of different sizes and variances is not 1 under the null; this measures what it is."""
    pool = np.concatenate([rows[:, a_mask], rows[:, b_mask]], axis=1)  # (grid, na + nb)
    na, nb = int(a_mask.sum()), int(b_mask.sum())
    rng = np.random.default_rng([seed, 19])
    in_a = (rng.random((n, na + nb)).argsort(1) < na).astype(np.float64)  # (n, na + nb)
    ka = khandelwal.settled(grid, pool @ in_a.T / na, tol_nats)
    kb = khandelwal.settled(grid, pool @ (1.0 - in_a).T / nb, tol_nats)
    ratios = _censored_ratio(ka, kb, float(max(grid)))
    lo = float(np.quantile(ratios, 0.025, method="lower"))
    hi = float(np.quantile(ratios, 0.975, method="higher"))
    return float(np.median(ratios)), (lo, hi)


def _show(v: float, grid, tolerance: float, unit: str = "tokens") -> str:
    return (
        f"not within {tolerance:.0%} up to {max(grid)} {unit}" if math.isinf(v) else f"{v:g} {unit}"
    )


def _relative(d: np.ndarray, full: np.ndarray, seed: int) -> dict:
    """mean(d) / mean(full): a per-target loss change as a fraction of the full-context loss,
    with its 95% interval bootstrapped over the targets (paired)."""

    def ratio(x, f, axis=-1):
        return np.mean(x, axis=axis) / np.mean(f, axis=axis)

    value = float(ratio(d, full))
    return stats.estimate(value, stats.bootstrap((d, full), ratio, seed=seed, paired=True))


def _conditions(results: dict, model_metrics: dict, settings: dict) -> str:
    """How this run departs from the paper's: each model's size, training and corpus."""
    out = []
    for n, r in results.items():
        mm = model_metrics.get(n, {})
        epochs = len(mm.get("history", [])) or "?"
        tokens = mm.get("train_tokens_per_epoch")
        trained = f"{epochs} epoch(s)" + (f" of {tokens / 1e6:.2g}M tokens" if tokens else "")
        size = f"{mm['parameters'] / 1e6:.2g}M-parameter " if "parameters" in mm else ""
        ppl = f", test perplexity {mm['test_perplexity']:.0f}" if "test_perplexity" in mm else ""
        out.append(f"{n}: {size}LSTM LM, {trained} on {r['corpus']}{ppl}")
    s = settings
    return (
        "; ".join(out)
        + f"; {s['targets']} targets of the {s['split']} split, context grid up to "
        + f"{max(s['sizes'])}, a {s['perturb_context']}-token perturbation window (paper: "
        + "AWD-LSTM of 24M / 33M parameters trained 500 / 750 epochs on PTB / WikiText-2, every "
        + "validation token)"
    )


#: Tokens the paper's AWD-LSTM read in training: 500 epochs of PTB's 0.93M.
PAPER_TRAINING_TOKENS = 500 * 0.93e6


def _budget_note(model_metrics: dict, losses: dict) -> str:
    """Where a model read under a hundredth of the paper's training tokens: that a ~200-token
    effective context cannot be measured meaningfully at this budget."""
    short = []
    for n in losses:
        mm = model_metrics.get(n, {})
        seen = len(mm.get("history", [])) * (mm.get("train_tokens_per_epoch") or 0)
        if seen and seen < PAPER_TRAINING_TOKENS / 100:
            short.append(f"{n} read {seen / 1e6:.2g}M training tokens")
    if not short:
        return ""
    paper = f"{PAPER_TRAINING_TOKENS / 1e6:.0f}M"
    return (
        f"; {', '.join(short)}, under a hundredth of the paper's {paper}: at this budget a "
        "~200-token effective context cannot be measured meaningfully"
    )


def context_claims(
    results: dict, losses: dict, settings: dict, model_metrics: dict, *, seed: int = 0
) -> dict:
    """Every claim of Khandelwal et al. 2018 (and Merity et al. 2018's perplexities) from the
    per-target losses: one part per model, the weakest decides."""
    sizes, boundaries = list(settings["sizes"]), list(settings["boundaries"])
    tol = settings["tolerance"]
    cond = _conditions(results, model_metrics, settings)
    claims = {}
    weights = {n: _weights(len(p["full"]), seed) for n, p in losses.items()}

    # effective context: the smallest k from which on the mean loss stays within tol
    parts, texts = {}, []
    for n, p in losses.items():
        k, ks = _settled_with_interval(sizes, p["increase"], p["full"], tol, weights[n])
        note = f"not within {tol:.0%} up to {max(sizes)} tokens: value is a lower bound"
        parts[n] = stats.estimate(
            min(k, max(sizes)),
            _grid_interval(k, ks, max(sizes)),
            note=note if math.isinf(k) else None,
        )
        texts.append(f"{n}: {_show(k, sizes, tol)}")
    claims["effective_context"] = stats.claim(
        parts, "; ".join(texts), cond + _budget_note(model_metrics, losses)
    )

    # word order: the smallest boundary beyond which shuffling changes the loss within tol
    parts, texts, left = {}, [], {}
    for n, p in losses.items():
        if "shuffle_global" not in p["perturbation"]:
            left[n] = "shuffle_global is not among the perturbations"
            continue
        b, bs = _settled_with_interval(
            boundaries, p["perturbation"]["shuffle_global"], p["full"], tol, weights[n]
        )
        parts[n] = stats.estimate(
            min(b, max(boundaries)),
            _grid_interval(b, bs, max(boundaries)),
            note=f"still beyond {tol:.0%} at boundary {max(boundaries)}: value is a lower bound"
            if math.isinf(b)
            else None,
        )
        window = results[n]["perturbation"]["context"]
        texts.append(
            f"{n}: shuffling all but the nearest b tokens of a {window}-token window changes "
            + (
                f"the loss by more than {tol:.0%} still at b = {max(boundaries)}"
                if math.isinf(b)
                else f"the loss by at most {tol:.0%} from b = {b:g} on"
            )
        )
    claims["order_matters_only_nearby"] = stats.claim(parts, "; ".join(texts), cond, left_out=left)

    # content vs function, rare vs frequent targets: the ratio of their settled sizes, each
    # group against its own full-context loss but with one tolerance (in nats) for both
    # against the null of the same targets dealt at random into groups of the same sizes
    for claim, (more, fewer) in (
        ("content_needs_more_context", ("content", "function")),
        ("rare_needs_more_context", ("rare", "frequent")),
    ):
        parts, texts, left = {}, [], {}
        for n, p in losses.items():
            g = p["groups"]
            counts = {x: int(g[x].sum()) for x in (more, fewer)}
            if min(counts.values()) < 2:
                left[n] = f"fewer than 2 {more} or {fewer} targets ({counts})"
                continue
            ka, kas = _settled_with_interval(
                sizes, p["increase"], p["full"], tol, weights[n], g[more]
            )
            kb, kbs = _settled_with_interval(
                sizes, p["increase"], p["full"], tol, weights[n], g[fewer]
            )
            if math.isinf(ka) and math.isinf(kb):
                left[n] = f"neither {more} nor {fewer} targets settle within the grid"
                continue
            top = float(max(sizes))
            value = float(_censored_ratio(ka, kb, top))
            samples = _censored_ratio(kas, kbs, top)
            null, null_interval = _dealt_ratio_null(
                sizes, p["increase"], tol * float(p["full"].mean()), g[more], g[fewer], seed
            )
            parts[n] = stats.estimate(
                value,
                _grid_interval(value, samples, value),
                null=null,
                null_interval=null_interval,
            )
            texts.append(
                f"{n}: {more} targets {_show(ka, sizes, tol)} (n={counts[more]}) vs {fewer} "
                f"targets {_show(kb, sizes, tol)} (n={counts[fewer]}), ratio {value:.2f}; "
                f"targets dealt at random into groups of these sizes: ratio {null:.2f} "
                f"[{null_interval[0]:.2f}, {null_interval[1]:.2f}]"
            )
        claims[claim] = stats.claim(parts, "; ".join(texts), cond, left_out=left)

    # perturbation contrasts: per-target loss changes as fractions of the full-context loss
    def far(threshold):
        return [b for b in boundaries if b >= threshold] or [max(boundaries)]

    def mean_over(rows, at):
        return rows[[boundaries.index(b) for b in at]].mean(0)

    # the paper's cut points: the first boundary of the grid at or beyond them (the largest
    # where the grid stops short)
    near_b, far_order = min(boundaries), far(FAR_ORDER)
    at_words, at_order = far(FAR_WORDS)[:1], far(FAR_ORDER)[:1]
    contrasts = {
        "local_order_nearby": [
            (
                kind,
                lambda r, k=kind: r[k][boundaries.index(near_b)] - mean_over(r[k], far_order),
                f"{kind} of the {settings['span']} tokens beyond b = {near_b} minus beyond "
                f"b in {far_order}",
            )
            for kind in ("shuffle_local", "reverse_local")
        ],
        "content_words_matter_far": [
            (
                "",
                lambda r: (
                    mean_over(r["drop_content"], at_words) - mean_over(r["drop_function"], at_words)
                ),
                f"drop_content minus drop_function beyond b = {at_words[0]}",
            )
        ],
        "far_context_is_topic": [
            (
                "",
                lambda r: (
                    mean_over(r["replace"], at_order) - mean_over(r["shuffle_global"], at_order)
                ),
                f"replace minus shuffle_global beyond b = {at_order[0]}",
            )
        ],
    }
    needs = {
        "local_order_nearby": {"shuffle_local", "reverse_local"},
        "content_words_matter_far": {"drop_content", "drop_function"},
        "far_context_is_topic": {"replace", "shuffle_global"},
    }
    for claim, items in contrasts.items():
        parts, texts, left = {}, [], {}
        for n, p in losses.items():
            pert = p["perturbation"]
            for kind, contrast, what in items:
                if kind and kind not in pert or not kind and not needs[claim] <= set(pert):
                    left[f"{n}/{kind}" if kind else n] = "not among the perturbations"
                    continue
                est = _relative(contrast(pert), p["full"], seed)
                name = f"{n}/{kind}" if kind else n
                parts[name] = est
                texts.append(f"{name}: {what}: {100 * est['value']:+.2g}% of the full-context loss")
        claims[claim] = stats.claim(parts, "; ".join(texts), cond, left_out=left)

    # Merity et al.'s perplexities: the test perplexity of one whole stream is exact
    for corpus, claim in (("ptb", "ptb_test_perplexity"), ("wikitext2", "wt2_test_perplexity")):
        trained = {n: mm for n, mm in model_metrics.items() if mm["corpus"] == corpus}
        if not trained:
            claims[claim] = {
                "na": f"no language model trained on {corpus} in this profile (the offline "
                "prose corpus is not comparable)",
                "conditions": cond,
            }
            continue
        parts = {n: stats.estimate(mm["test_perplexity"]) for n, mm in trained.items()}
        claims[claim] = stats.claim(
            parts,
            "; ".join(
                f"{n}: test perplexity {mm['test_perplexity']:.1f}, validation "
                f"{mm['valid_perplexity']:.1f}, after {len(mm['history'])} epochs (exact: the "
                "whole test split read as one stream, no sampling)"
                for n, mm in trained.items()
            ),
            cond + "; no fine-tuning stage",
        )
    return claims
