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
        result["effective_context"][g] = khandelwal.effective_context(
            sizes, restricted[:, mask].mean(1).tolist(), g_full, tolerance
        )
    return result


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
    results, trained = {}, {}
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
    return Computed(metrics, {"trained": trained})


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
    s = result.metrics["settings"]
    return context_claims(
        result.metrics["models"],
        s["sizes"],
        s["boundaries"],
        result.data["trained"],
        s["tolerance"],
    )


def _reached(per_model: dict) -> dict:
    """{model: value}, a None (never within the tolerance over the grid) as infinity: beyond
    every measured size, so it fails a between-rule whatever the grid."""
    return {m: math.inf if v is None else float(v) for m, v in per_model.items()}


def _farthest(values: dict, centre: float) -> str:
    """The model whose value is farthest from `centre` (by ratio): it decides the claim."""
    return max(values, key=lambda m: abs(math.log(max(values[m], 1e-9) / centre)))


def context_claims(
    results: dict, sizes: list, boundaries: list, model_metrics: dict, tolerance: float
) -> dict:
    claims = {}

    def show(v, grid, unit="tokens"):
        return (
            f"not within {tolerance:.0%} up to {max(grid)} {unit}"
            if math.isinf(v)
            else (f"{v:g} {unit}")
        )

    eff = _reached({m: r["effective_context"]["all"] for m, r in results.items()})
    m = _farthest(eff, 200)
    claims["effective_context"] = {
        "value": eff[m],
        "ours": "; ".join(f"{n}: {show(v, sizes)}" for n, v in eff.items())
        + (f" ({m} decides)" if len(eff) > 1 else ""),
    }
    order = _reached(
        {
            n: r["insensitive_beyond"]["shuffle_global"]
            for n, r in results.items()
            if "shuffle_global" in r["insensitive_beyond"]
        }
    )
    if order:
        m = _farthest(order, 35)
        claims["order_matters_only_nearby"] = {
            "value": order[m],
            "ours": "; ".join(
                f"{n}: shuffling all but the nearest tokens of a "
                f"{results[n]['perturbation']['context']}-token window changes the loss by "
                + (
                    f"more than {tolerance:.0%} still at boundary {max(boundaries)}"
                    if math.isinf(v)
                    else f"at most {tolerance:.0%} from boundary {v:g} on"
                )
                for n, v in order.items()
            ),
        }
    else:
        claims["order_matters_only_nearby"] = {
            "na": "shuffle_global is not among the perturbations"
        }
    ratios, texts = {}, []
    for n, r in results.items():
        e, g = _reached(r["effective_context"]), r["groups"]
        if not (g["content"]["n"] and g["function"]["n"]):
            continue
        if math.isinf(e["content"]) and math.isinf(e["function"]):
            continue  # neither settles within the grid: no order between them
        ratios[n] = e["content"] / e["function"]
        texts.append(
            f"{n}: content targets {show(e['content'], sizes)} (n={g['content']['n']}) vs "
            f"function targets {show(e['function'], sizes)} (n={g['function']['n']})"
        )
    if ratios:
        m = min(ratios, key=ratios.get)
        claims["content_needs_more_context"] = {
            "value": ratios[m],
            "ours": "; ".join(texts) + f"; ratio {ratios[m]:.2f}",
        }
    else:
        claims["content_needs_more_context"] = {
            "na": "no model has both content- and function-word targets whose loss settles "
            "within the context grid"
        }
    for corpus, claim in (("ptb", "ptb_test_perplexity"), ("wikitext2", "wt2_test_perplexity")):
        trained = {n: mm for n, mm in model_metrics.items() if mm["corpus"] == corpus}
        if not trained:
            claims[claim] = {
                "na": f"no language model trained on {corpus} in this profile (the offline "
                "prose corpus is not comparable)"
            }
            continue
        n, mm = min(trained.items(), key=lambda kv: kv[1]["test_perplexity"])
        claims[claim] = {
            "value": mm["test_perplexity"],
            "ours": f"{n}: test perplexity {mm['test_perplexity']:.1f}, validation "
            f"{mm['valid_perplexity']:.1f}, after {len(mm['history'])} epochs",
        }
    return claims
