"""The workflow on SLURM, for real: a single-node cluster (munged, slurmctld and slurmd from
Debian's packages, on localhost) runs the smoke profile through `--executor slurm` and
profiles/slurm, and its results equal the local run's."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import copy_workflow, measured, snakemake

pytestmark = pytest.mark.slow

DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "srun", "squeue", "sinfo", "scontrol", "scancel")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def slurm_conf(d: Path, ports: tuple[int, int]) -> str:
    # The node declares 8 CPUs and 32 GB whatever this machine has (config_overrides), so that a
    # group of short experiments fits in one job as it would on a real node; nothing is enforced
    # (no cgroups in a container), the jobs simply share the cores.
    return f"""\
ClusterName=cvinterp-test
SlurmctldHost=localhost
SlurmctldPort={ports[0]}
SlurmdPort={ports[1]}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={d}/munge/munge.socket
StateSaveLocation={d}/state
SlurmdSpoolDir={d}/spool
SlurmctldPidFile={d}/slurmctld.pid
SlurmdPidFile={d}/slurmd.pid
SlurmctldLogFile={d}/log/slurmctld.log
SlurmdLogFile={d}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
SlurmdParameters=config_overrides
MinJobAge=86400
ReturnToService=2
MpiDefault=none
NodeName=localhost NodeAddr=127.0.0.1 CPUs=8 RealMemory=32000 State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
"""


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    """A running single-node SLURM cluster of its own (private ports, munge socket and state);
    yields the environment that points SLURM's commands at it. Skips, saying what to install,
    where SLURM or the executor plugin is missing."""
    path = f"{os.environ['PATH']}:/usr/sbin:/sbin"  # the daemons live in sbin
    missing = [b for b in (*DAEMONS, *CLIENTS) if shutil.which(b, path=path) is None]
    if missing:
        pytest.skip(f"SLURM missing ({', '.join(missing)}): apt-get install slurm-wlm munge")
    if os.geteuid() != 0:
        pytest.skip("the single-node SLURM cluster runs its daemons as root")
    pytest.importorskip("snakemake_executor_plugin_slurm", reason='pip install -e ".[slurm]"')
    d = tmp_path_factory.mktemp("slurm")
    for sub in ("munge", "state", "spool", "log", "bin"):
        (d / sub).mkdir()
    (d / "munge").chmod(0o700)
    key = d / "munge" / "munge.key"
    key.write_bytes(os.urandom(128))
    key.chmod(0o400)
    conf = d / "slurm.conf"
    ports = (free_port(), free_port())
    assert ports[0] != ports[1]
    conf.write_text(slurm_conf(d, ports))
    # Snakemake's job-step plugin clears SLURM_* variables before its inner `srun`, so SLURM_CONF
    # does not reach it there; this cluster's config is not at the default path, so `srun` is
    # wrapped to find it. (A real cluster has /etc/slurm/slurm.conf or runs config-less.)
    srun = d / "bin" / "srun"
    real_srun = shutil.which("srun", path=path)
    srun.write_text(f'#!/bin/sh\nexport SLURM_CONF={conf}\nexec {real_srun} "$@"\n')
    srun.chmod(0o755)
    env = {**os.environ, "SLURM_CONF": str(conf), "PATH": f"{d / 'bin'}:{path}"}
    m = d / "munge"
    subprocess.run(
        ["munged", "--force", f"--socket={m}/munge.socket", f"--key-file={key}",
         f"--log-file={m}/munged.log", f"--pid-file={m}/munged.pid",
         f"--seed-file={m}/munged.seed"],
        check=True, env=env,
    )  # fmt: skip
    try:
        subprocess.run(["slurmctld", "-f", str(conf)], check=True, env=env)
        subprocess.run(["slurmd", "-f", str(conf), "-N", "localhost"], check=True, env=env)
        deadline = time.time() + 60
        state = ""
        while time.time() < deadline and state != "idle":
            time.sleep(1)
            res = subprocess.run(
                ["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, env=env
            )
            state = res.stdout.strip()
        logs = "\n".join(p.read_text()[-1500:] for p in sorted((d / "log").glob("*.log")))
        assert state == "idle", f"the test cluster's node is {state!r}:\n{logs}"
        yield env
    finally:
        # jobs first (job steps outlive slurmd), then the daemons
        subprocess.run(["scancel", "--full", "--user=root"], env=env, capture_output=True)
        deadline = time.time() + 60
        while time.time() < deadline:
            res = subprocess.run(
                ["squeue", "-h", "-t", "PD,R,CG"], capture_output=True, text=True, env=env
            )
            if res.returncode != 0 or not res.stdout.strip():
                break
            time.sleep(1)
        subprocess.run(["scontrol", "shutdown"], env=env, capture_output=True)
        subprocess.run(
            ["munged", "--stop", f"--socket={m}/munge.socket"], env=env, capture_output=True
        )
        time.sleep(2)
        for pidfile in (d / "slurmd.pid", d / "slurmctld.pid", m / "munged.pid"):
            try:  # a daemon that did not stop: only if that pid is still the daemon
                pid = int(pidfile.read_text())
                if Path(f"/proc/{pid}/comm").read_text().strip() in DAEMONS:
                    os.kill(pid, signal.SIGTERM)
            except (OSError, ValueError):
                pass  # stopped


def cluster_jobs(env: dict) -> list[dict]:
    """Every job the test cluster has seen: id, Snakemake's run name, state, comment."""
    res = subprocess.run(
        ["squeue", "--states=all", "--noheader", "--format=%i|%j|%T|%k"],
        capture_output=True, text=True, env=env, check=True,
    )  # fmt: skip
    rows = [line.split("|", 3) for line in res.stdout.splitlines() if line.strip()]
    return [dict(zip(("id", "name", "state", "comment"), r, strict=True)) for r in rows]


def test_smoke_profile_runs_on_slurm_and_matches_the_local_run(slurm, smoke, tmp_path):
    local_wd, local_out, shared = smoke
    wd = copy_workflow(tmp_path)
    res = snakemake(
        wd, "--workflow-profile", "profiles/slurm", "--configfile", "config/smoke.yaml",
        "--config", shared,
        # this test cluster's settings: no accounting database, so `squeue` answers status
        # queries (MinJobAge is a day), no accounts, and short jobs checked on soon
        "--slurm-status-command", "squeue", "--slurm-no-account",
        "--slurm-init-seconds-before-status-checks", "5", "--retries", "0",
        env=slurm,
    )  # fmt: skip
    assert res.returncode == 0, (res.stdout + res.stderr)[-4000:]

    # Every job that is not a local rule went through SLURM and completed there; SLURM's
    # comment names the rule (rule_<name>[_wildcards_...]) or the group (rule_<group>_<rules>).
    (run_log,) = (wd / ".snakemake" / "log").glob("*.snakemake.log")
    planned = run_log.read_text()
    remote = set(re.findall(r"^\s*rule (\w+):", planned, re.M))
    local = set(re.findall(r"^\s*localrule (\w+):", planned, re.M))
    assert {"model", "language_model", "lm_context", "dissection", "filters"} <= remote
    assert {"compare", "provenance", "bibliography"} <= local
    jobs = cluster_jobs(slurm)
    assert jobs and all(j["state"] == "COMPLETED" for j in jobs), jobs
    comments = [j["comment"] for j in jobs]
    for rule in remote:
        assert any(
            c == f"rule_{rule}"
            or c.startswith(f"rule_{rule}_wildcards_")
            or (c.startswith("rule_short_experiments_") and rule in c)
            for c in comments
        ), (rule, comments)
    for rule in local:
        assert not any(c == f"rule_{rule}" or c.startswith(f"rule_{rule}_") for c in comments)
    models = len(re.findall(r"^\s*rule model:", planned, re.M))
    assert models == 8 and sum(c.startswith("rule_model_wildcards_") for c in comments) == models
    # The nine short experiments shared SLURM jobs, five to a job (profiles/slurm): two jobs,
    # and none of them ran as a job of its own.
    grouped = [c for c in comments if c.startswith("rule_short_experiments_")]
    assert len(grouped) == 2, comments
    for rule in ("filters", "activations", "top_images", "occlusion", "embedding", "actmax"):
        assert f"rule_{rule}" not in comments, rule

    # Same numbers as the local run: the comparison table and every metrics file.
    (out,) = (wd / "results").iterdir()
    assert out.name == local_out.name  # same config, same versioned folder
    assert (out / "compare.tsv").read_text() == (local_out / "compare.tsv").read_text()
    local = sorted(p.relative_to(local_out) for p in local_out.rglob("metrics/**/*.json"))
    ours = sorted(p.relative_to(out) for p in out.rglob("metrics/**/*.json"))
    assert ours == local and len(ours) > 10
    for rel in ours:
        a = measured(json.loads((out / rel).read_text()))
        b = measured(json.loads((local_out / rel).read_text()))
        assert a == b, rel
    figures = sorted(p.relative_to(out) for p in out.rglob("figures/**/*.png"))
    assert figures == sorted(p.relative_to(local_out) for p in local_out.rglob("figures/**/*.png"))
    with open(out / "compare.tsv", newline="") as f:
        assert len(list(csv.DictReader(f, delimiter="\t"))) > 20


class PlannedJob:
    """What the SLURM plugin reads of a job to pick a partition."""

    def __init__(self, name: str, threads: int, **resources):
        self.name, self.threads, self.resources = name, threads, resources


def test_example_partition_map_sends_gpu_jobs_to_the_gpu_partition(root):
    pytest.importorskip("snakemake_executor_plugin_slurm", reason='pip install -e ".[slurm]"')
    from snakemake_executor_plugin_slurm.partitions import get_best_partition, read_partition_file

    class Log:
        def info(self, msg): ...

        debug = warning = info

    partitions = read_partition_file(root / "profiles" / "slurm" / "partitions.yaml")
    # the paper profile's training and experiment jobs, and the default profile's
    paper_model = PlannedJob("model", 8, mem_mb=16000, runtime=720, gpu=1)
    paper_lm = PlannedJob("language_model", 8, mem_mb=16000, runtime=1440, gpu=1, gpu_model="h100")
    default_model = PlannedJob("model", 2, mem_mb=4000, runtime=120, gpu=0)
    assert get_best_partition(partitions, paper_model, Log()) == "gpu"
    assert get_best_partition(partitions, paper_lm, Log()) == "gpu"
    assert get_best_partition(partitions, default_model, Log()) == "cpu"
    # a job over every partition's limit is not placed (the plugin then falls back to the default)
    assert get_best_partition(partitions, PlannedJob("x", 8, runtime=10**6), Log()) is None


@pytest.mark.parametrize("profile", ["default", "paper"])
def test_slurm_plan_groups_short_cpu_experiments_and_never_gpu_jobs(tmp_path, profile):
    pytest.importorskip("snakemake_executor_plugin_slurm", reason='pip install -e ".[slurm]"')
    wd = copy_workflow(tmp_path)
    config = ["--configfile", "config/paper.yaml"] if profile == "paper" else []
    res = snakemake(wd, "-n", "--workflow-profile", "profiles/slurm", *config)
    assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
    plan = res.stdout + res.stderr
    groups = re.findall(r"Group job short_experiments", plan)
    models = re.findall(r"^\s*rule model:\n(?:\s+.*\n)*?\s+resources: (.*)$", plan, re.M)
    assert models
    if profile == "default":
        assert len(groups) == 2  # nine short experiments, five to a job
        assert all("mem_mb=4000" in r and "gpu=0" in r for r in models), models
    else:
        assert not groups  # paper-scale jobs ask for a GPU each: never grouped
        assert all("mem_mb=16000" in r and "gpu=1" in r for r in models), models
