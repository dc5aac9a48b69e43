"""Build the rehearsal: synthetic data, its served download addresses, the composed config.

The rehearsal's config is deep-merge(config/paper.yaml, config/rehearsal.yaml[size].overrides,
{downloads: the local server's addresses with the synthetic files' sha256, the Fashion-MNIST
content pins of the synthetic files, datasets.imagenet_val.dir: the synthetic validation tree,
resources_dir: <workdir>/resources, version: rehearsal-<size>}), with `weights: random` for the
nets whose weights the paper profile downloads from torchvision.
"""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from cvinterp.data.fetch import DOWNLOADS
from cvinterp.rehearsal import synthetic

#: Written next to the synthetic data: what it was written for (reused when the same).
MANIFEST = "synthetic.json"
FORMAT = 1  # bump when a writer changes what it writes
#: Parts of the checkout the workflow reads by relative path: linked into the working directory.
LINKED = ("config", "workflow", "profiles", "src", "pyproject.toml", "CITATION.cff")


def repo_root() -> Path:
    """The repository holding the Snakefile (this package lives in its src/)."""
    here = Path(__file__).resolve()
    for parent in here.parents:
        if (parent / "Snakefile").is_file() and (parent / "config" / "paper.yaml").is_file():
            return parent
    raise FileNotFoundError(
        "cannot find the cvinterp repository (Snakefile, config/paper.yaml) above "
        f"{here}: run the rehearsal from a checkout (pip install -e .)"
    )


def deep_merge(base: dict, over: dict) -> dict:
    """`base` with `over` merged in, nested mappings key by key (neither is changed)."""
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def sizes(repo: Path | None = None) -> dict[str, dict]:
    """config/rehearsal.yaml: {size: {synthetic, overrides}}."""
    path = (repo or repo_root()) / "config" / "rehearsal.yaml"
    return yaml.safe_load(path.read_text())


def write_synthetic(
    spec: dict[str, Any], folder: str | Path, seed: int = 0, workers: int | None = None
) -> dict[str, Any]:
    """Write the synthetic datasets of `spec` (a size's `synthetic` section) under `folder`:
    serve/ holds every file of `fetch.DOWNLOADS` under its own name, imagenet-val/ the
    validation tree. Returns the manifest {serve, imagenet_val, sha256: {file: hex},
    fashion_content_sha256: {file: hex}}; a folder written for the same spec and seed is reused
    as it is."""
    folder = Path(folder)
    wanted = {"spec": spec, "seed": seed, "format": FORMAT}
    marker = folder / MANIFEST
    if marker.is_file():
        manifest = json.loads(marker.read_text())
        if manifest.get("wanted") == wanted:
            return manifest
    if folder.exists():
        shutil.rmtree(folder)
    serve = folder / "serve"
    serve.mkdir(parents=True)
    val = spec["imagenet_val"]
    synthetic.imagenet_val(
        folder / "imagenet-val",
        val["images"],
        seed=seed,
        sizes=[tuple(s) for s in val.get("sizes", synthetic.VAL_SIZES)],
        workers=workers,
    )
    for side in (224, 227):
        name = f"broden1_{side}"
        built = synthetic.broden(
            folder / "broden", name, spec["broden"]["images"], side, seed, workers=workers
        )
        synthetic.zip_dir(built, serve / f"{name}.zip")
        shutil.rmtree(built)
    cifar = spec["cifar10"]
    synthetic.cifar10_tarball(
        serve / "cifar-10-python.tar.gz", cifar["train"], cifar["test"], seed=seed
    )
    fm = spec["fashion_mnist"]
    content = synthetic.fashion_mnist(serve, fm["train"], fm["test"], seed=seed)
    synthetic.ptb(serve, spec["ptb"]["tokens"], spec["ptb"]["vocab"], seed=seed)
    wt2 = spec["wikitext2"]
    synthetic.wikitext2_zip(serve / "wikitext-2-v1.zip", wt2["tokens"], wt2["vocab"], seed=seed)
    missing = [n for n in DOWNLOADS if not (serve / n).is_file()]
    if missing:
        raise RuntimeError(f"the synthetic writers did not write {', '.join(missing)}")
    manifest = {
        "wanted": wanted,
        "serve": str(serve),
        "imagenet_val": str(folder / "imagenet-val"),
        "sha256": {n: synthetic.sha256(serve / n) for n in DOWNLOADS},
        "fashion_content_sha256": content,
    }
    marker.write_text(json.dumps(manifest, indent=1))
    return manifest


def compose(
    size: str, workdir: str | Path, base_url: str, manifest: dict, repo: Path | None = None
) -> dict:
    """The rehearsal's config (see the module's docstring)."""
    repo = repo or repo_root()
    workdir = Path(workdir).resolve()
    paper = yaml.safe_load((repo / "config" / "paper.yaml").read_text())
    if size not in (table := sizes(repo)):
        raise ValueError(
            f"unknown rehearsal size {size!r}; config/rehearsal.yaml has {list(table)}"
        )
    config = deep_merge(paper, table[size].get("overrides") or {})
    for spec in config["models"].values():
        if spec.get("weights") == "torchvision":  # no weights download: random init
            spec["weights"] = "random"
    base_url = base_url.rstrip("/") + "/"
    config["downloads"] = {
        name: {"url": base_url + name, "hash": f"sha256:{manifest['sha256'][name]}"}
        for name in DOWNLOADS
    }
    datasets = config.setdefault("datasets", {})
    fashion = datasets.setdefault("fashion_mnist", {})
    fashion.update(dir=None, download=True, content_sha256=manifest["fashion_content_sha256"])
    datasets.setdefault("imagenet_val", {})["dir"] = str(manifest["imagenet_val"])
    config["resources_dir"] = str(workdir / "resources")
    config["version"] = f"rehearsal-{size}"
    return config


def snakemake_command(workdir: Path, repo: Path, cores: int | str, extra: list[str]) -> list[str]:
    return [
        sys.executable,
        "-m",
        "snakemake",
        "--snakefile",
        str(repo / "Snakefile"),
        "--directory",
        str(workdir),
        "--configfile",
        str(workdir / "config.yaml"),
        "--cores",
        str(cores),
        *extra,
    ]


def rehearse(
    size: str,
    workdir: str | Path,
    extra: list[str] | None = None,
    cores: int | str = "all",
    workers: int | None = None,
    seed: int = 0,
) -> int:
    """Write (or reuse) the synthetic data in `workdir`, serve it, write workdir/config.yaml and
    run Snakemake on it with the server up; returns Snakemake's exit status."""
    from cvinterp.rehearsal.serve import LocalServer

    repo = repo_root()
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    spec = sizes(repo)[size]["synthetic"]
    print(f"rehearsal ({size}): writing or reusing the synthetic data in {workdir / 'synthetic'}")
    manifest = write_synthetic(spec, workdir / "synthetic", seed=seed, workers=workers)
    # the workflow reads config/config.yaml (its base config), config/netdissect/ and
    # workflow/report/ relative to the working directory, as in a run from the checkout
    for name in LINKED:
        link = workdir / name
        if not link.exists() and not link.is_symlink():
            link.symlink_to(repo / name, target_is_directory=(repo / name).is_dir())
    port_file = workdir / "port"
    port = int(port_file.read_text()) if port_file.is_file() else 0
    with LocalServer(manifest["serve"], port) as server:
        port_file.write_text(str(server.port))
        config = compose(size, workdir, server.url(), manifest, repo)
        (workdir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        cmd = snakemake_command(workdir, repo, cores, list(extra or []))
        print("rehearsal: " + " ".join(cmd), flush=True)
        return subprocess.run(cmd, cwd=workdir).returncode
