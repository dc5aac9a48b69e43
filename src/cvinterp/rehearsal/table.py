"""The rehearsal's per-job table: what each job of the paper profile took, and what the paper run
would take from it.

Read from a finished rehearsal: Snakemake's benchmark files (wall seconds, peak resident memory),
the jobs' logs (`logs.PEAK_DEVICE`: peak CUDA memory, where a job used a GPU), the trained
models' metrics (images or tokens trained, seconds) and the composed config against
config/paper.yaml. The estimate for the paper run scales a job's wall time by the ratio of the
paper's count to the rehearsal's for every count the rehearsal caps (epochs, training images or
tokens, iterations; config/rehearsal.yaml's overrides), assuming time linear in each: set-up
(loading data, writing figures) is scaled too, so an estimate errs long. A job the rehearsal
does not cap runs at the paper's size already: its estimate is its wall time. An experiment
with several capped counts (the tiny size's) gets no estimate: whether they add or multiply is
the experiment's own business.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import yaml

from cvinterp.config import resolve
from cvinterp.logs import PEAK_DEVICE
from cvinterp.rehearsal.compose import repo_root, sizes

#: Training images per epoch of each dataset at the paper's scale, where the paper profile does
#: not cap them (`max_train_images`): the real datasets' training splits.
TRAIN_IMAGES = {"cifar10": 50000, "fashion_mnist": 60000, "mnist5k": 4000}
#: Training tokens per epoch of each corpus (Merity et al.'s splits).
TRAIN_TOKENS = {"ptb": 929_589, "wikitext2": 2_088_628}

COLUMNS = (
    "job",
    "wall (s)",
    "peak host memory (MiB)",
    "peak device memory (MiB)",
    "throughput",
    "scale to paper",
    "paper run (h)",
)


def _benchmarks(folder: Path) -> dict[str, dict]:
    """{job: {seconds, max_rss MiB}} of the benchmark files under `folder`."""
    jobs = {}
    for path in sorted(folder.rglob("*.tsv")):
        with open(path) as fh:
            rows = list(csv.DictReader(fh, delimiter="\t"))
        if rows:
            job = str(path.relative_to(folder).with_suffix(""))
            rss = rows[-1].get("max_rss", "NA")
            jobs[job] = {
                "seconds": float(rows[-1]["s"]),
                "rss": None if rss in ("NA", "", None) else float(rss),
            }
    return jobs


def _peak_device(log: Path) -> float | None:
    if not log.is_file():
        return None
    peaks = [
        float(line[len(PEAK_DEVICE) :].split()[0])
        for line in log.read_text(errors="replace").splitlines()
        if line.startswith(PEAK_DEVICE)
    ]
    return max(peaks) if peaks else None


def _ratio(paper, rehearsed) -> float:
    if not isinstance(paper, int | float) or not isinstance(rehearsed, int | float):
        return 1.0
    return paper / rehearsed if rehearsed else 1.0


def _leaf_ratios(paper: dict, override: dict) -> float:
    """Product of paper / rehearsal over the numeric leaves the override sets."""
    scale = 1.0
    for key, value in override.items():
        if isinstance(value, dict):
            scale *= _leaf_ratios(paper.get(key) or {}, value)
        elif isinstance(value, int | float) and not isinstance(value, bool):
            scale *= _ratio(paper.get(key), value)
    return scale


def _count_leaves(tree) -> int:
    if isinstance(tree, dict):
        return sum(_count_leaves(v) for v in tree.values())
    return 1


def _model_scale(name: str, paper: dict, caps: dict) -> float | None:
    spec = paper["models"].get(name) or paper.get("language_models", {}).get(name)
    if spec is None:
        return None
    scale = 1.0
    for section in ("train", "pretrain"):
        cap = caps.get(section) or {}
        full = spec.get(section) or {}
        if "epochs" in cap:
            scale *= _ratio(full.get("epochs"), cap["epochs"])
        if "max_train_images" in cap:
            dataset = spec.get("dataset")
            if dataset == "photo_patches":
                images = paper["datasets"]["photo_patches"]["n_train"]
            else:
                images = full.get("max_train_images") or TRAIN_IMAGES.get(dataset)
            if images is None:
                return None
            scale *= _ratio(images, cap["max_train_images"])
        if "tokens_per_epoch" in cap:
            scale *= _ratio(TRAIN_TOKENS.get(spec.get("corpus")), cap["tokens_per_epoch"])
    return scale


def _throughput(job: str, results: Path, config: dict, seconds: float) -> str:
    """Images or tokens per second: trained ones for a model, processed ones for an
    experiment whose count the config states."""
    if job.startswith("models/"):
        path = results / "metrics" / f"{job}.json"
        if not path.is_file():
            return ""
        m = json.loads(path.read_text())
        if "train_tokens_per_second_this_run" in m:
            return f"{m['train_tokens_per_second_this_run']:,} tokens/s (training)"
        epochs = len({h.get("epoch") for h in m.get("history", []) if h.get("epoch")})
        run_s = m.get("train_seconds_this_run")
        if m.get("n_train") and epochs and run_s:
            return f"{m['n_train'] * epochs / max(run_s, 1e-9):,.0f} images/s (training)"
        return ""
    settings = config["experiments"].get(job)
    if settings is None:
        return ""
    nets = len(settings.get("models", {})) or 1
    count = {
        "ablation": lambda: settings["images"] * nets,
        "embedding": lambda: settings["images"],
        "inversion_learned": lambda: (
            settings["train_images"] * settings["epochs"] + settings["test_images"]
        ),
        "activations": lambda: settings["images"] * nets,
        "top_images": lambda: config["datasets"]["imagenet_probe"]["n"] * nets,
    }.get(job)
    if count is None:
        return ""
    return f"{count() / max(seconds, 1e-9):,.0f} images/s"


def rows(workdir: Path, size: str) -> list[dict]:
    """One row per job of the rehearsal in `workdir` (see the module's docstring)."""
    repo = repo_root()
    results = workdir / "results" / f"rehearsal-{size}"
    config = yaml.safe_load((workdir / "config.yaml").read_text())
    schema = repo / "workflow" / "schemas" / "config.schema.yaml"  # with the defaults filled
    paper = resolve(yaml.safe_load((repo / "config" / "paper.yaml").read_text()), schema)
    caps = sizes(repo)[size].get("overrides") or {}
    jobs = _benchmarks(results / "benchmarks")
    resources = Path(config.get("resources_dir", workdir / "resources"))
    jobs |= {f"data/{k}": v for k, v in _benchmarks(resources / "benchmarks").items()}
    out = []
    for job, bench in sorted(jobs.items()):
        if job.startswith("models/"):
            name = job.split("/", 1)[1]
            cap = (caps.get("models") or {}).get(name) or (caps.get("language_models") or {}).get(
                name, {}
            )
            scale = _model_scale(name, paper, cap)
        elif job.startswith("data/"):
            scale = 1.0
        else:  # one capped count scales the job; several (added or multiplied?) do not
            override = (caps.get("experiments") or {}).get(job, {})
            capped = _count_leaves(override)
            scale = (
                _leaf_ratios(paper["experiments"].get(job, {}), override) if capped < 2 else None
            )
        log = results / "logs" / f"{job}.log"
        peak = _peak_device(log)
        out.append(
            {
                "job": job,
                "wall (s)": f"{bench['seconds']:.1f}",
                "peak host memory (MiB)": "" if bench["rss"] is None else f"{bench['rss']:.0f}",
                "peak device memory (MiB)": "" if peak is None else f"{peak:.0f}",
                "throughput": _throughput(job, results, config, bench["seconds"]),
                "scale to paper": "" if scale is None else f"{scale:,.0f}x",
                "paper run (h)": ""
                if scale is None
                else f"{bench['seconds'] * scale / 3600:,.{1 if scale > 1 else 2}f}",
            }
        )
    return out


def markdown(table: list[dict], device: str) -> str:
    lines = [
        f"Rehearsal on {device}. Wall time and peak memory from Snakemake's benchmark files; "
        "peak device memory from the jobs' logs (blank: the job used no GPU); the paper run "
        "scales the wall time by the rehearsal's caps (config/rehearsal.yaml).",
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "|".join("---" for _ in COLUMNS) + "|",
    ]
    lines += ["| " + " | ".join(r[c] for c in COLUMNS) + " |" for r in table]
    total = sum(float(r["wall (s)"]) for r in table)
    paper = sum(float(r["paper run (h)"].replace(",", "")) for r in table if r["paper run (h)"])
    lines += [
        "",
        f"Jobs' wall time summed: {total / 60:.1f} min; paper run, summed: {paper:,.0f} h.",
    ]
    return "\n".join(lines) + "\n"


def write_table(workdir: Path, size: str) -> Path:
    """Write workdir/results/rehearsal-<size>/rehearsal.md and .tsv; return the .md's path."""
    import platform

    import torch

    table = rows(Path(workdir), size)
    device = (
        torch.cuda.get_device_name(0)
        if torch.cuda.is_available()
        else f"the CPU ({platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} threads)"
    )
    folder = Path(workdir) / "results" / f"rehearsal-{size}"
    with open(folder / "rehearsal.tsv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, COLUMNS, delimiter="\t")
        writer.writeheader()
        writer.writerows(table)
    out = folder / "rehearsal.md"
    out.write_text(markdown(table, device))
    return out
