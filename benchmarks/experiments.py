"""Every experiment end to end on one device, timed: `cvinterp.experiments.run` on random-weight
ImageNet nets at their input size (AlexNet, VGG16) and a paper-size AWD-LSTM, with synthetic data
in the real formats (an ImageNet-style class folder, a folder in the Broden layout, PTB-style
text files). It checks that the experiment layer runs where the workflow would send it (a GPU
among others) and how long each experiment takes at these sizes; the numbers measure nothing
about the papers.

    python benchmarks/experiments.py [--device auto] [--only NAME ...] [--out results.json]

The settings are the paper profile's (config/paper.yaml, resolved with the schema's defaults),
with fewer images and iterations (SCALED below). On a machine without Snakemake, write them here
first with `--write-settings settings.json` and pass `--settings settings.json` there.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import device_name, print_table, resolve_device, write_json
from PIL import Image

from cvinterp.experiments import EXPERIMENTS, Model, Probe, run
from cvinterp.models import IMAGENET_RGB, build, save_checkpoint
from cvinterp.models.awd_lstm import AWDLSTM, save_lm

ROOT = Path(__file__).resolve().parents[1]

NETS = ("alexnet", "vgg16")
# What each experiment runs here: its models (the paper profile's, limited to the random-weight
# nets built here) and settings scaled down from the paper profile's.
SCALED = {
    "filters": {"models": {"alexnet": {}, "vgg16": {}}, "colour_model": None},
    "activations": {"images": 64},
    "top_images": {"max_images": 200},
    "deconvnet": {"max_images": 200},
    "guided_backprop": {"max_images": 200, "test_error_model": None},
    "backprop": {"models": {"alexnet": {}, "vgg16": {}}, "sanity": {"images": 16}},
    "occlusion": {"models": {"alexnet": {"layer": "conv5", "window": 48, "stride": 8}}},
    "actmax": {
        "models": {"alexnet": {"layer": "fc8"}},
        "erhan": None,
        "yosinski": {"model": "alexnet", "max_iterations": 50},
    },
    "embedding": {"images": 200, "thumbnails": 49},
    "inversion_dip": {
        "models": {"alexnet": {"layers": ["input", "conv1", "conv5", "fc8"]}},
        "images": 1,
        "iterations": 100,
    },
    "inversion_learned": {"train_images": 160, "test_images": 40, "epochs": 1},
    "dissection": {
        "models": {"alexnet": {"layers": ["conv5"]}, "vgg16": {"layers": ["conv5_3"]}},
        "cache_mb": 1024,
        "batch_size": 4,
    },
    "ablation": {"images": 200},
    "lm_context": {"models": {"lm": {}}, "targets": 500},
}


def scaled_settings() -> dict:
    """The paper profile's experiments, resolved, with SCALED applied."""
    import yaml

    from cvinterp.config import resolve

    paper = yaml.safe_load((ROOT / "config" / "paper.yaml").read_text())
    experiments = resolve(paper, ROOT / "workflow" / "schemas" / "config.schema.yaml")[
        "experiments"
    ]
    out = {}
    for name, settings in experiments.items():
        s = copy.deepcopy(settings)
        change = copy.deepcopy(SCALED.get(name, {}))
        if "models" not in change:  # the paper's layers of the nets built here
            change["models"] = {m: v for m, v in s["models"].items() if m in NETS}
        for key, value in change.items():
            if isinstance(value, dict) and isinstance(s.get(key), dict) and key != "models":
                s[key].update(value)
            else:
                s[key] = value
        out[name] = s
    return out


def imagenet_folder(root: Path, classes: int = 1000, per_class: int = 1) -> Path:
    """Random-noise JPEGs in ImageNet's 1000 class sub-folders (as ImageFolder reads them)."""
    from cvinterp.data.images import imagenet_wnids

    rng = np.random.default_rng(0)
    for c in range(classes):
        folder = root / imagenet_wnids()[c]
        folder.mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, (240, 288, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / f"img{i}.JPEG", quality=90)
    return root


def ptb_folder(root: Path, vocab: int = 2000, tokens: int = 60000) -> Path:
    """ptb.{train,valid,test}.txt of Zipf-distributed words, 20 words a line."""
    rng = np.random.default_rng(0)
    words = np.array([f"w{i}" for i in range(vocab)])
    root.mkdir(parents=True)
    for split, n in (("train", tokens), ("valid", tokens // 4), ("test", tokens // 4)):
        ids = np.minimum(rng.zipf(1.3, n), vocab) - 1
        lines = [" ".join(words[ids[i : i + 20]]) for i in range(0, n, 20)]
        (root / f"ptb.{split}.txt").write_text("\n".join(lines) + "\n")
    return root


def models_for(name: str, settings: dict, files: dict) -> dict[str, Model]:
    """The experiment's models as the workflow would hand them over, on the files made here."""
    if name == "lm_context":
        spec = {"corpus": "ptb", "vocab_size": None}
        data = {"corpus_dir": str(files["ptb"]), "austen_dir": None}
        return {"lm": Model("lm", files["lm"], spec, metrics=files["lm_metrics"], data=data)}
    data = {
        "probe": str(files["broden"]),
        "released": str(ROOT / "config/netdissect/released.yaml"),
    }
    return {
        m: Model(m, files[m], {"arch": m, "weights": "random"}, settings=s, data=data)
        for m, s in settings["models"].items()
    }


def prepare(tmp: Path) -> dict:
    """Checkpoints and data: the random-weight nets, the LM, the three data folders."""
    sys.path.insert(0, str(ROOT / "tests" / "fixtures"))
    from make_broden import write_fixture
    from torchvision.models._meta import _IMAGENET_CATEGORIES

    from cvinterp.data import load_corpus

    files = {
        "imagenet": imagenet_folder(tmp / "imagenet_val"),
        "broden": write_fixture(tmp / "broden"),
    }
    for i, arch in enumerate(NETS):
        torch.manual_seed(i)
        path = tmp / f"{arch}.pt"
        meta = {"name": arch, "weights": "random"}
        save_checkpoint(
            path, build(arch, 1000), arch=arch, num_classes=1000, in_channels=3, arch_args={},
            preprocessing=IMAGENET_RGB, classes=list(_IMAGENET_CATEGORIES), meta=meta,
        )  # fmt: skip
        files[arch] = str(path)
    files["ptb"] = ptb_folder(tmp / "ptb")
    corpus = load_corpus("ptb", folder=files["ptb"], vocab_size=None)
    torch.manual_seed(0)
    lm = AWDLSTM(len(corpus.vocab), emb=400, hidden=1150, layers=3)
    files["lm"] = str(tmp / "lm.pt")
    save_lm(files["lm"], lm, corpus.vocab, {"name": "lm", "corpus": "ptb", "seed": 0})
    files["lm_metrics"] = str(tmp / "lm.json")
    trained = {"corpus": "ptb", "test_perplexity": 1.0e3, "valid_perplexity": 1.0e3, "history": []}
    Path(files["lm_metrics"]).write_text(json.dumps(trained))
    return files


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--only", nargs="*", default=None, help="experiments to run (default all)")
    parser.add_argument("--settings", help="resolved settings written by --write-settings")
    parser.add_argument("--write-settings", help="write the resolved settings here and stop")
    parser.add_argument("--out", help="write the results as JSON")
    args = parser.parse_args()
    if args.write_settings:
        Path(args.write_settings).write_text(json.dumps(scaled_settings(), indent=1))
        return
    device = resolve_device(parser, args.device)
    settings = json.loads(Path(args.settings).read_text()) if args.settings else scaled_settings()
    names = args.only or list(EXPERIMENTS)
    rows, result = [("experiment", "models", "seconds", "claims measured")], {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        files = prepare(tmp)
        datasets = {"imagenet_val": {"dir": str(files["imagenet"])}, "imagenet_probe": {"n": 200}}
        for name in names:
            s = settings[name]
            models = models_for(name, s, files)
            probe = Probe(datasets=datasets, seed=0, imagenet_probe=200, threads=4)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            t0 = time.perf_counter()
            try:
                run(name, s, models, probe=probe, device=device.type, results=tmp / "results")
            except ModuleNotFoundError as err:  # e.g. openTSNE on a machine without it
                rows.append((name, ", ".join(models), "-", f"skipped: {err}"))
                result[name] = {"skipped": str(err)}
                continue
            seconds = time.perf_counter() - t0
            metrics = json.loads((tmp / "results" / "metrics" / f"{name}.json").read_text())
            measured = sum("value" in c for c in metrics["claims"].values())
            figures = sorted(p.name for p in (tmp / "results" / "figures" / name).glob("*.png"))
            peak = (
                torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
            )
            result[name] = {
                "seconds": round(seconds, 2),
                "models": list(models),
                "figures": figures,
                "claims_measured": measured,
                "claims": len(metrics["claims"]),
                "peak_gpu_gib": peak and round(peak, 2),
            }
            rows.append(
                (name, ", ".join(models), f"{seconds:.1f}", f"{measured}/{len(metrics['claims'])}")
            )
            print(f"{name}: {seconds:.1f} s", flush=True)
    print(f"device: {device_name(device)}, torch {torch.__version__}")
    print_table(rows, left=2)
    if args.out:
        write_json(
            {"device": device_name(device), "torch": torch.__version__, "experiments": result},
            args.out,
        )


if __name__ == "__main__":
    main()
