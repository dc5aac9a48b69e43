import copy
import datetime
import re
import sys

import yaml
from pathlib import Path

from cvinterp.data.fetch import DOWNLOADS
from cvinterp.data.images import FASHION_FILES
from cvinterp.data.pos import TAG_FILES
from cvinterp.experiments import declaration
from cvinterp.models import torchvision_weights_name, zoo
from cvinterp.config import (
    check_released_references,
    check_version_folder,
    claim_version_folder,
    data_fingerprints,
    leave_out_without_imagenet,
    left_out_line,
    left_out_reasons,
    resolve,
    version_of,
)
from cvinterp.runtime import gpu_count

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
RELEASED = "config/netdissect/released.yaml"
check_released_references(
    config, yaml.safe_load((Path(workflow.basedir) / RELEASED).read_text())
)

# The version hashes what determines the results (cvinterp.config.hashed_view): data folders by
# a fingerprint of their content, not threads, device or paths.
FINGERPRINTS = data_fingerprints(config)
VERSION = version_of(config, FINGERPRINTS)
RESULTS = f"results/{VERSION}"
RESOURCES = config["resources_dir"]
CLAIMS = sorted(
    str(p) for p in (Path(workflow.basedir) / "config/claims").glob("*.yaml")
)
START_FILE = f".snakemake/cvinterp/{VERSION}.start"

check_version_folder(RESULTS, config, FINGERPRINTS)
CONFIGURED = copy.deepcopy(config)  # as given: recorded in the results folder

# Without the ImageNet validation folder, the models that need it are left out of the plan (and
# an experiment left with none); one line says so, and their claims are n/a with the reason.
_planned, LEFT_OUT = leave_out_without_imagenet(config)
config.clear()
config.update(_planned)
LEFT_OUT_REASONS = left_out_reasons(LEFT_OUT, config)
if LEFT_OUT and workflow.is_main_process:
    print(left_out_line(LEFT_OUT), file=sys.stderr)
EXPERIMENTS = list(config["experiments"])


LANGUAGE_MODELS = list(config.get("language_models", {}))

# What a job asks a cluster for (profiles/slurm; locally only `threads` matters). Paper-scale jobs
# are bigger and ask for a GPU when the device may be one. Memory grows with each attempt, so a
# job killed for memory is resubmitted (`--retries`) with more; training resumes from its state.
# Locally, a job that may use the GPU asks for one whenever this machine has one (any profile),
# and the machine's GPUs bound how many such jobs run at once (unless --resources gpu=N says
# otherwise); without a GPU, the default profile's jobs run side by side as before.
PAPER = config["profile"] == "paper"
LOCAL_GPUS = (
    gpu_count() if workflow.local_exec and config["device"] in ("auto", "cuda") else 0
)
GPU = int(
    config["device"] == "cuda"
    or (config["device"] == "auto" and (PAPER or LOCAL_GPUS > 0))
)
if GPU and LOCAL_GPUS and "gpu" not in workflow.global_resources:
    workflow.global_resources["gpu"] = LOCAL_GPUS


def memory(default, paper=None):
    """A job's memory request in MB: the profile's size, times the attempt."""
    base = paper if PAPER and paper is not None else default
    return lambda wildcards, attempt: base * attempt


def minutes(default, paper=None):
    """A job's time limit in minutes (a training job cut off resumes on its next attempt)."""
    return paper if PAPER and paper is not None else default


def job_group(experiment):
    """The cluster job group of an experiment's rule: the default profile's experiments that
    take seconds to a minute, less than a cluster job's start-up, share jobs
    (`group-components` in profiles/slurm); paper-scale and GPU jobs don't (a group adds up
    the resources of its jobs, GPUs included)."""
    if declaration(experiment).short and not PAPER and not GPU:
        return "short_experiments"
    return None


wildcard_constraints:
    model="|".join(config["models"]),
    lm="|".join(LANGUAGE_MODELS) or "(?!)",


onstart:
    claim_version_folder(RESULTS, CONFIGURED, FINGERPRINTS)
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


# Probe sets in the Broden layout (Network Dissection): the offline stand-in (rule
# concept_probe) or the real Broden (rule get_broden). The stand-in's folder names the
# writer's layout version (v2: label coverage in c_*.csv), so a folder written by an older
# writer is never read as a new one.
def concept_probe_dir():
    cp = config["datasets"]["concept_probe"]
    return f"{RESOURCES}/concept_probe/n{cp['images']}_s{cp['size']}_seed{config['seed']}_v2"


def broden_dir(name, model):
    """A model's probe folder in experiment `name`: the stand-in, or the Broden of the net's
    input size (227-px nets such as CaffeNet and SqueezeNet get broden1_227, the rest
    broden1_224)."""
    exp = config["experiments"][name]
    if exp["dataset"] == "standin":
        return concept_probe_dir()
    size = (
        exp["models"][model].get("size")
        or zoo()[config["models"][model]["arch"]]["input_size"]
    )
    return f"{RESOURCES}/broden1_{227 if size == 227 else 224}"


# Corpora of the language models.
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


def lm_tag_inputs(lm, split):
    """Khandelwal et al.'s part-of-speech tag file of a PTB / WikiText-2 model's `split` (none
    for the prose corpus: it is tagged when read)."""
    corpus = config["language_models"][lm]["corpus"]
    if corpus not in TAG_FILES:
        return []
    return [f"{RESOURCES}/downloads/{TAG_FILES[corpus][0].format(split)}"]


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


# Every experiment is one rule (workflow/rules/<stage>.smk) built from its declaration
# (cvinterp.experiments.<name>.DECLARATION) by the helpers below.
def experiment_models(name):
    return list(config["experiments"][name]["models"])


def model_files(name, model):
    """Data a model of an experiment reads, by kind: its dataset (or corpus) files, and folders
    the experiment's script is told about."""
    if declaration(name).language_models:
        tags = lm_tag_inputs(model, config["experiments"][name]["split"])
        files = lm_corpus_inputs(model) + tags
        folders = {
            "corpus_dir": lm_corpus_dir(model),
            "austen_dir": lm_austen_dir(model),
            "tags_dir": str(Path(tags[0]).parent) if tags else None,
        }
    else:
        files, folders = dataset_files(model), {}
    if declaration(name).broden:
        folders = {"probe": broden_dir(name, model), "released": RELEASED}
    return files, folders


def experiment_inputs(name):
    """Checkpoints, the data their models read and the training metrics the experiment reads."""
    models = experiment_models(name)
    tested = declaration(name).training_metrics(config["experiments"][name])
    files = {
        "checkpoints": [f"{RESULTS}/models/{m}.pt" for m in models],
        "data": sorted({f for m in models for f in model_files(name, m)[0]}),
        "training_metrics": [f"{RESULTS}/metrics/models/{m}.json" for m in tested],
    }
    if declaration(
        name
    ).broden:  # probe sets in the Broden layout, the released results
        files["probes"] = sorted({f"{broden_dir(name, m)}/index.csv" for m in models})
        files["released"] = RELEASED
    return files


def experiment_figures(name):
    return [
        f"{RESULTS}/figures/{name}/{f}.png"
        for f in declaration(name).figures(config["experiments"][name])
    ]


def experiment_tables(name):
    return [
        f"{RESULTS}/tables/{name}/{t}.csv"
        for t in declaration(name).tables(config["experiments"][name])
    ]


def reported(name, path):
    """A figure in the HTML report, under its experiment, with the experiment's caption."""
    stem = Path(path).stem
    caption = declaration(name).captions.get(stem, name)
    labels = {"figure": name, "model": stem}
    return report(
        path, caption=f"../report/{caption}.rst", category=name, labels=labels
    )


def experiment_outputs(name, report_them=True):
    """Figures (in the report, with the experiment's caption), tables and metrics."""
    figures = experiment_figures(name)
    if report_them:
        figures = [reported(name, path) for path in figures]
    out = {"figures": figures, "metrics": f"{RESULTS}/metrics/{name}.json"}
    tables = experiment_tables(name)
    if tables:
        out["tables"] = tables
    return out


def experiment_params(name):
    """What the script is told: each model's spec, its settings in the experiment and the
    folders it reads; the folders of the image datasets among the job's inputs."""
    kind = "language_models" if declaration(name).language_models else "models"
    models = {
        m: {
            "spec": config[kind][m],
            "settings": settings,
            "data": model_files(name, m)[1],
        }
        for m, settings in config["experiments"][name]["models"].items()
    }
    return {
        "models": models,
        "training_metrics": declaration(name).training_metrics(
            config["experiments"][name]
        ),
        "fashion_dir": fashion_dir_of,
        "cifar_dir": cifar_dir_of,
    }


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


def experiment_threads(name):
    return declaration(name).threads or config["threads"]


def experiment_resources(name):
    """Memory and time limit (default profile, paper profile); a GPU where it can use one."""
    d = declaration(name)
    out = {"mem_mb": memory(*d.mem_mb), "runtime": minutes(*d.runtime)}
    if d.gpu:
        out["gpu"] = GPU
    return out


def experiment_metrics():
    return {e: f"{RESULTS}/metrics/{e}.json" for e in EXPERIMENTS}


def final_outputs():
    outs = [
        f"{RESULTS}/compare.tsv",
        f"{RESULTS}/compare.html",
        f"{RESULTS}/provenance.json",
        f"{RESULTS}/references.bib",
    ]
    for name in EXPERIMENTS:
        out = experiment_outputs(name, report_them=False)
        outs += out["figures"] + out.get("tables", []) + [out["metrics"]]
    return outs
