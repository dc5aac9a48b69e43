import datetime
import re

import yaml
from pathlib import Path

from cvinterp.data.fetch import DOWNLOADS
from cvinterp.data.images import FASHION_FILES
from cvinterp.models import torchvision_weights_name, zoo
from cvinterp.config import (
    check_released_references,
    check_version_folder,
    claim_version_folder,
    resolve,
    version_of,
)

# A profile given with --configfile replaces config/config.yaml instead of being merged into
# it (profiles are complete files); --config key=value still overrides single keys.
if workflow.config_settings.configfiles:
    config.clear()
    config.update(workflow.config_settings.overwrite_config)

# Validate once: unknown keys and wrong types stop here, naming the key; defaults are filled.
_resolved = resolve(
    config, Path(workflow.basedir) / "workflow/schemas/config.schema.yaml"
)
config.clear()
config.update(_resolved)
check_released_references(
    config,
    yaml.safe_load(
        (Path(workflow.basedir) / "config/netdissect/released.yaml").read_text()
    ),
)

VERSION = version_of(config)
RESULTS = f"results/{VERSION}"
RESOURCES = config["resources_dir"]
CLAIMS = sorted(
    str(p) for p in (Path(workflow.basedir) / "config/claims").glob("*.yaml")
)
EXPERIMENTS = list(config["experiments"])
START_FILE = f".snakemake/cvinterp/{VERSION}.start"

check_version_folder(RESULTS, config)


LANGUAGE_MODELS = list(config.get("language_models", {}))

# What a job asks a cluster for (profiles/slurm; locally only `threads` matters). Paper-scale jobs
# are bigger and ask for a GPU when the device may be one. Memory grows with each attempt, so a
# job killed for memory is resubmitted (`--retries`) with more; training resumes from its state.
PAPER = config["profile"] == "paper"
GPU = int(config["device"] == "cuda" or (config["device"] == "auto" and PAPER))
# The default profile's experiments that take seconds to a minute, less than a cluster job's
# start-up: on a cluster they share jobs (`group-components` in profiles/slurm).
SHORT_EXPERIMENTS = {
    "filters",
    "activations",
    "top_images",
    "deconvnet",
    "guided_backprop",
    "backprop",
    "occlusion",
    "actmax",
    "embedding",
}


def memory(default, paper=None):
    """A job's memory request in MB: the profile's size, times the attempt."""
    base = paper if PAPER and paper is not None else default
    return lambda wildcards, attempt: base * attempt


def minutes(default, paper=None):
    """A job's time limit in minutes (a training job cut off resumes on its next attempt)."""
    return paper if PAPER and paper is not None else default


def job_group(experiment):
    """The cluster job group of an experiment's rule: short CPU jobs share jobs; paper-scale and
    GPU jobs don't (a group adds up the resources of its jobs, GPUs included)."""
    if experiment in SHORT_EXPERIMENTS and not PAPER and not GPU:
        return "short_experiments"
    return None


wildcard_constraints:
    model="|".join(config["models"]),
    lm="|".join(LANGUAGE_MODELS) or "(?!)",


onstart:
    claim_version_folder(RESULTS, config)
    Path(START_FILE).parent.mkdir(parents=True, exist_ok=True)
    Path(START_FILE).write_text(
        datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    )
    print(f"cvinterp: writing results/{VERSION}/ (profile {config['profile']})")


def model_spec(wildcards):
    return config["models"][wildcards.model]


def model_inputs(wildcards):
    """Files a model's job reads: its dataset or its ImageNet weights, when a rule fetches them
    (compute nodes of a cluster are often offline: downloads are local rules)."""
    return dataset_files(wildcards.model) + torchvision_weights(wildcards.model)


# torchvision ImageNet weights by file name -> architecture (paper profile)
TORCHVISION_WEIGHTS = {
    torchvision_weights_name(spec["arch"]): spec["arch"]
    for spec in config["models"].values()
    if spec.get("weights") == "torchvision"
}


def torchvision_weights(model):
    spec = config["models"][model]
    if spec.get("weights") != "torchvision":
        return []
    return [
        f"{RESOURCES}/torch-hub/checkpoints/{torchvision_weights_name(spec['arch'])}"
    ]


def dataset_files(model):
    """The files of the dataset a model is trained on, when a rule fetches them."""
    spec = config["models"][model]
    if spec.get("weights", "train") == "train":
        if spec["dataset"] == "fashion_mnist":
            return fashion_mnist_files()
        if spec["dataset"] == "cifar10":
            return cifar10_files()
    return []


def unpack_destination(wildcards, output):
    """The folder an archive unpacks into: two levels above its first member file."""
    return str(Path(output[0]).parents[1])


def cifar10_files():
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    return [f"{RESOURCES}/cifar10/cifar-10-batches-py/{n}" for n in names]


def fashion_mnist_files():
    names = [n for pair in FASHION_FILES.values() for n in pair]
    return [f"{RESOURCES}/fashion-mnist/{n}" for n in names]


def filters_outputs():
    figs = [
        f"{RESULTS}/figures/filters/{m}.png"
        for m in config["experiments"]["filters"]["models"]
    ]
    return figs + [
        f"{RESULTS}/figures/filters/colour_selectivity.png",
        f"{RESULTS}/metrics/filters.json",
    ]


# What one unit does (issue 3): one rule each, generated in workflow/rules/units.smk.
UNIT_EXPERIMENTS = [
    e
    for e in (
        "activations",
        "top_images",
        "deconvnet",
        "guided_backprop",
        "backprop",
        "occlusion",
        # what all units do (issue 4): cvinterp.all_unit_experiments
        "actmax",
        "embedding",
        "inversion_dip",
        "inversion_learned",
        # how units matter (issue 6): cvinterp.importance_experiments
        "ablation",
    )
    if e in config["experiments"]
]


def unit_models(name):
    exp = config["experiments"][name]
    if name == "actmax":
        subs = [exp.get("erhan"), exp.get("yosinski")]
        return list(dict.fromkeys(sub["model"] for sub in subs if sub))
    return list(exp["layers"]) if "layers" in exp else list(exp["models"])


def unit_inputs(name):
    """Checkpoints, the datasets they were trained on, and the metrics a claim reads."""
    models = unit_models(name)
    files = {
        "checkpoints": [f"{RESULTS}/models/{m}.pt" for m in models],
        "data": sorted({f for m in models for f in dataset_files(m)}),
    }
    tested = config["experiments"][name].get("test_error_model")
    if tested:
        files["test_error"] = f"{RESULTS}/metrics/models/{tested}.json"
    return files


def fashion_dir_of(wildcards, input):
    """The Fashion-MNIST folder among a job's data inputs (None when it reads none)."""
    hits = [f for f in input.get("data", []) if Path(f).parent.name == "fashion-mnist"]
    return str(Path(hits[0]).parent) if hits else None


def cifar_dir_of(wildcards, input):
    """The CIFAR-10 folder (holding cifar-10-batches-py/) among a job's data inputs."""
    hits = [
        f for f in input.get("data", []) if Path(f).parent.name == "cifar-10-batches-py"
    ]
    return str(Path(hits[0]).parents[1]) if hits else None


def unit_figures(name, report_them=True):
    if name == "actmax":
        exp = config["experiments"]["actmax"]
        keys = [k for k in ("erhan", "yosinski") if exp.get(k)]
    elif name == "embedding":
        keys = [
            f"{m}{part}"
            for m in unit_models(name)
            for part in ("", "_thumbnails", "_units")
        ]
    elif name == "ablation":
        layers = config["experiments"]["ablation"]["layers"]
        keys = [f"{m}_{layer}" for m, ls in layers.items() for layer in ls]
    else:
        keys = unit_models(name)
    figs = {k: f"{RESULTS}/figures/{name}/{k}.png" for k in keys}
    if name == "backprop":
        figs["randomisation"] = f"{RESULTS}/figures/{name}/randomisation.png"
    if not report_them:
        return figs
    return {
        key: report(
            path,
            caption=f"../report/{name}.rst",
            category=name,
            labels={"figure": name, "model": key},
        )
        for key, path in figs.items()
    }


def unit_settings(name):
    """The experiment's config section as keyword arguments of its pipeline function."""
    exp = dict(config["experiments"][name])
    if name == "occlusion":
        exp["settings"] = exp.pop("models")
    elif name == "backprop":
        exp.pop("models")
    elif name == "guided_backprop":
        tested = exp.pop("test_error_model")
        exp["test_error"] = tested and {
            "model": tested,
            "dataset": config["models"][tested].get("dataset"),
            "metrics": f"{RESULTS}/metrics/models/{tested}.json",
        }
    return exp


# What units detect (issue 5): Network Dissection, workflow/rules/dissection.smk.
def dissection_models():
    return list(config["experiments"]["dissection"]["layers"])


def concept_probe_dir():
    cp = config["datasets"]["concept_probe"]
    return (
        f"{RESOURCES}/concept_probe/n{cp['images']}_s{cp['size']}_seed{config['seed']}"
    )


def dissection_probe_dirs():
    """Model -> probe folder: the stand-in, or the Broden of the net's input size (227-px
    nets such as CaffeNet and SqueezeNet get broden1_227, the rest broden1_224)."""
    exp = config["experiments"]["dissection"]
    out = {}
    for m in dissection_models():
        if exp["probe"] == "standin":
            out[m] = concept_probe_dir()
        else:
            size = (
                exp["sizes"].get(m) or zoo()[config["models"][m]["arch"]]["input_size"]
            )
            out[m] = f"{RESOURCES}/broden1_{227 if size == 227 else 224}"
    return out


def dissection_figures(report_them=True):
    figs = {"detectors": f"{RESULTS}/figures/dissection/detectors.png"}
    figs |= {m: f"{RESULTS}/figures/dissection/{m}.png" for m in dissection_models()}
    if not report_them:
        return figs
    return {
        key: report(
            path,
            caption="../report/dissection.rst",
            category="dissection",
            labels={"figure": "dissection", "model": key},
        )
        for key, path in figs.items()
    }


def dissection_tables():
    return [f"{RESULTS}/tables/dissection/{m}.csv" for m in dissection_models()]


# How a language model uses context (issue 7): workflow/rules/language.smk.
LM_SPLITS = ("train", "valid", "test")


def austen_files():
    return [f"{RESOURCES}/janeaustenr/Rdata.rdx", f"{RESOURCES}/janeaustenr/Rdata.rdb"]


def wikitext2_files():
    return [f"{RESOURCES}/wikitext-2/wiki.{s}.tokens" for s in LM_SPLITS]


def lm_corpus_inputs(lm):
    """The files a language model's corpus is read from (`lm`: a name or the wildcards)."""
    lm = getattr(lm, "lm", lm)
    corpus = config["language_models"][lm]["corpus"]
    if corpus == "prose":
        return austen_files()
    if corpus == "ptb":
        return [f"{RESOURCES}/downloads/ptb.{s}.txt" for s in LM_SPLITS]
    return wikitext2_files()


def lm_spec(wildcards):
    return config["language_models"][wildcards.lm]


def lm_corpus_dir(lm):
    """The folder holding a PTB / WikiText-2 model's files (None for the prose corpus)."""
    lm = getattr(lm, "lm", lm)
    if config["language_models"][lm]["corpus"] == "prose":
        return None
    return str(Path(lm_corpus_inputs(lm)[0]).parent)


def lm_austen_dir(lm):
    lm = getattr(lm, "lm", lm)
    if config["language_models"][lm]["corpus"] != "prose":
        return None
    return str(Path(austen_files()[0]).parent)


def lm_context_models():
    return list(config["experiments"].get("lm_context", {}).get("models", []))


def lm_context_figures(report_them=True):
    figs = {m: f"{RESULTS}/figures/lm_context/{m}.png" for m in lm_context_models()}
    if not report_them:
        return figs
    return {
        key: report(
            path,
            caption="../report/lm_context.rst",
            category="lm_context",
            labels={"figure": "lm_context", "model": key},
        )
        for key, path in figs.items()
    }


def experiment_metrics():
    return {e: f"{RESULTS}/metrics/{e}.json" for e in EXPERIMENTS}


def experiment_outputs(name):
    if name == "filters":
        return filters_outputs()
    if name == "dissection":
        return (
            list(dissection_figures(report_them=False).values())
            + dissection_tables()
            + [f"{RESULTS}/metrics/dissection.json"]
        )
    if name == "lm_context":
        return list(lm_context_figures(report_them=False).values()) + [
            f"{RESULTS}/metrics/lm_context.json"
        ]
    if name in UNIT_EXPERIMENTS:
        return list(unit_figures(name, report_them=False).values()) + [
            f"{RESULTS}/metrics/{name}.json"
        ]
    raise ValueError(f"no rule produces experiment {name!r}")


def final_outputs():
    outs = [
        f"{RESULTS}/compare.tsv",
        f"{RESULTS}/provenance.json",
        f"{RESULTS}/references.bib",
    ]
    for name in EXPERIMENTS:
        outs += experiment_outputs(name)
    return outs
