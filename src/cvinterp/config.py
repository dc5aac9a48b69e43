"""Validate a profile once, fill its defaults, and derive the results version.

Everything downstream receives plain function arguments taken from the resolved config;
no module of cvinterp reads settings on its own.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator


class ConfigError(ValueError):
    """A config that does not match the schema; the message names the offending key."""


def _key_path(error) -> str:
    parts = [str(p) for p in error.absolute_path]
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        allowed = set(error.schema.get("properties", {}))
        extra = sorted(k for k in error.instance if k not in allowed)
        if extra and error.schema.get("additionalProperties") is False:
            return ".".join([*parts, extra[0]])
    if error.validator == "required":
        missing = [k for k in error.validator_value if k not in (error.instance or {})]
        if missing:
            return ".".join([*parts, missing[0]])
    return ".".join(parts) or "<top level>"


def _describe(error) -> str:
    key = _key_path(error)
    if (
        error.validator == "additionalProperties"
        and error.schema.get("additionalProperties") is False
    ):
        allowed = ", ".join(sorted(error.schema.get("properties", {})))
        return f"unknown config key '{key}' (allowed here: {allowed})"
    if error.validator == "required":
        return f"missing config key '{key}'"
    return f"config key '{key}': {error.message}"


def load_schema(schema_path: str | Path) -> dict:
    with open(schema_path) as fh:
        return yaml.safe_load(fh)


def resolve(config: Mapping[str, Any], schema_path: str | Path) -> dict:
    """Return a validated copy of `config` with every schema default filled in.

    The schema (JSON Schema 2020-12) is checked first without defaults, so that every problem
    is reported, each naming its key (Snakemake's `validate` stops at the first and prints the
    schema); then Snakemake's `validate` fills the defaults. Raises ConfigError.
    """
    from snakemake.exceptions import WorkflowError
    from snakemake.utils import validate

    resolved = copy.deepcopy(dict(config))
    validator = Draft202012Validator(load_schema(schema_path))
    errors = sorted(validator.iter_errors(resolved), key=lambda e: list(e.absolute_path))
    if errors:
        lines = "\n".join(f"  - {_describe(e)}" for e in errors)
        raise ConfigError(f"invalid config ({len(errors)} problem(s)):\n{lines}")
    try:
        validate(resolved, str(schema_path))
    except WorkflowError as err:  # a default that does not fit its own schema
        raise ConfigError(f"invalid config after filling the schema's defaults: {err}") from None
    # defaults are filled in by reference: one object per default, whoever takes it
    resolved = copy.deepcopy(resolved)
    _check_references(resolved)
    return resolved


def _check_references(config: dict) -> None:
    """Cross-field checks a JSON schema cannot express, read from each experiment's
    declaration: its models are defined (under `language_models` for language-model
    experiments), their layers are named layers of their architectures, a setting that names a
    model names one of the experiment's own, and the experiment's own checks."""
    from cvinterp.experiments import declaration
    from cvinterp.models import zoo

    _check_language_models(config)
    for name, exp in config["experiments"].items():
        d = declaration(name)
        kind = "language_models" if d.language_models else "models"
        defined = config.get(kind, {})
        for m, settings in exp["models"].items():
            key = f"experiments.{name}.models.{m}"
            if m not in defined:
                raise ConfigError(
                    f"config key '{key}' names {kind[:-1].replace('_', ' ')} '{m}', which is not "
                    f"defined under '{kind}' (defined: {', '.join(sorted(defined)) or 'none'})"
                )
            if d.language_models:
                continue
            arch = defined[m]["arch"]
            known = list(zoo()[arch]["layers"]) + (["input"] if d.input_layer else [])
            layers = settings.get("layers") or []
            if settings.get("layer"):
                layers = [*layers, settings["layer"]]
            bad = [layer for layer in layers if layer not in known]
            if bad:
                raise ConfigError(
                    f"config key '{key}': {', '.join(map(repr, bad))} is not a named layer of "
                    f"{arch} (named: {', '.join(known)})"
                )
        for ref in d.model_references:
            value = exp
            for part in ref.split("."):
                value = (value or {}).get(part)
            if value is not None and value not in exp["models"]:
                raise ConfigError(
                    f"config key 'experiments.{name}.{ref}': '{value}' must also be listed in "
                    f"'experiments.{name}.models'"
                )
        if d.check is not None:
            try:
                d.check(exp)
            except ValueError as err:
                raise ConfigError(str(err)) from None


def _check_language_models(config: dict) -> None:
    """Language-model names are their own namespace: they must not shadow an image model."""
    lms = config.get("language_models", {})
    clash = sorted(set(lms) & set(config["models"]))
    if clash:
        raise ConfigError(
            f"config key 'language_models.{clash[0]}': the name is also used under 'models' "
            "(checkpoints share results/<version>/models/): rename one of them"
        )


IMAGENET_KEY = "datasets.imagenet_val.dir"


def leave_out_without_imagenet(config: Mapping[str, Any]) -> tuple[dict, dict[str, list[str]]]:
    """(the config to plan, {experiment: its models left out}). Without an ImageNet validation
    folder (datasets.imagenet_val.dir null) each experiment's models that need it (its
    declaration's `needs_imagenet`) are left out; so is an experiment left with no model, or
    one whose settings name a model left out. With the folder, the config as it is."""
    from cvinterp.experiments import declaration

    if ((config.get("datasets") or {}).get("imagenet_val") or {}).get("dir"):
        return dict(config), {}
    planned = copy.deepcopy(dict(config))
    left_out = {}
    for name, exp in config["experiments"].items():
        d = declaration(name)
        if d.needs_imagenet is None:
            continue
        out = [m for m in d.needs_imagenet(exp, config["models"]) if m in exp["models"]]
        if not out:
            continue
        left_out[name] = out
        kept = {m: s for m, s in exp["models"].items() if m not in out}
        named = [_dotted(exp, ref) for ref in d.model_references]
        if not kept or any(v in out for v in named):
            del planned["experiments"][name]
            left_out[name] = list(exp["models"])
        else:
            planned["experiments"][name]["models"] = kept
    return planned, left_out


def _dotted(settings: Mapping[str, Any], key: str):
    value = settings
    for part in key.split("."):
        value = (value or {}).get(part)
    return value


def left_out_line(left_out: Mapping[str, list[str]]) -> str:
    """The one line the plan prints about what it left out for want of the ImageNet folder."""
    what = ", ".join(f"{e} ({', '.join(ms)})" for e, ms in left_out.items())
    return (
        f"cvinterp: left out without {IMAGENET_KEY}: {what}; set {IMAGENET_KEY} to your ImageNet "
        "validation folder (class sub-folders) to run them"
    )


def left_out_reasons(
    left_out: Mapping[str, list[str]], planned: Mapping[str, Any]
) -> dict[str, str]:
    """{experiment: why its claims lack (some of) its models}, for the comparison table: the
    claims of an experiment left out whole are n/a with this reason."""
    reasons = {}
    for name, models in left_out.items():
        many = len(models) > 1
        need = (
            f"{', '.join(models)} {'need' if many else 'needs'} the ImageNet validation folder; "
            f"set {IMAGENET_KEY} to run {'them' if many else 'it'}"
        )
        whole = name not in planned["experiments"]
        reasons[name] = f"not run: {need}" if whole else f"left out: {need}"
    return reasons


def check_released_references(config: Mapping[str, Any], released: Mapping[str, Any]) -> None:
    """The dissection's references must name entries of the released results
    (config/netdissect/released.yaml); same_weights needs an entry with per-unit labels."""
    exp = config.get("experiments", {}).get("dissection") or {}
    for m, settings in exp.get("models", {}).items():
        for layer, ref in settings.get("references", {}).items():
            key = f"experiments.dissection.models.{m}.references.{layer}"
            for which in ("trained", "random"):
                if ref.get(which) and ref[which] not in released:
                    raise ConfigError(
                        f"config key '{key}.{which}': '{ref[which]}' is not a released result "
                        f"(known: {', '.join(sorted(released))})"
                    )
            if ref.get("same_weights") and not released[ref["trained"]].get("per_unit"):
                raise ConfigError(
                    f"config key '{key}.same_weights': the released result '{ref['trained']}' "
                    "has no per-unit labels to compare unit by unit"
                )


#: Keys that name or place a run but do not change what it computes: the results folder's name,
#: where downloads are kept, the CPU threads of a job and the device. `device` is placement
#: too: `auto` is decided on the machine that runs a job (a cluster's login node plans jobs that
#: run on GPU nodes), and float32 results differ between a CPU and a GPU only by rounding, as
#: they do between two runs on one GPU (cuDNN); determinism is promised on the CPU only. So a
#: folder trained on a GPU is reused on the CPU and back, and `threads: 16` keeps the folder of
#: `threads: 8`.
NOT_HASHED = ("version", "resources_dir", "threads", "device")

#: Data folders given by path (datasets.<name>.dir): hashed by a fingerprint of their content,
#: not by their path, so the same data elsewhere keeps the results folder.
DATA_FOLDERS = ("fashion_mnist", "imagenet_val")

#: Files of a folder whose bytes enter its fingerprint (a fixed, seeded sample; all when fewer).
FINGERPRINT_SAMPLE = 64


def folder_fingerprint(folder: str | Path, sample: int = FINGERPRINT_SAMPLE) -> str:
    """A content fingerprint of a data folder (sha256, 16 hex digits), independent of where it
    lies: the sorted relative paths and sizes of all its files (symbolic links followed), plus
    the bytes of a fixed sample of `sample` of them (drawn with a seeded generator from the sorted
    list; every file when there are fewer, e.g. Fashion-MNIST's four). A file added, removed,
    renamed or resized changes it, and so do other bytes in a sampled file; a file rewritten in
    place at the same size outside the sample does not (the price of speed: one stat per file,
    50,000 ImageNet images in well under 2 s, and about 64 files read)."""
    root = Path(folder)
    if not root.is_dir():
        raise ConfigError(f"data folder {str(folder)!r} does not exist or is not a folder")
    files = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames.sort()
        for name in filenames:
            path = os.path.join(dirpath, name)
            files.append((os.path.relpath(path, root).replace(os.sep, "/"), os.stat(path).st_size))
    files.sort()
    digest = hashlib.sha256()
    for rel, size in files:
        digest.update(f"{rel}\0{size}\n".encode())
    chosen = sorted(random.Random(0).sample(range(len(files)), min(sample, len(files))))
    for i in chosen:
        digest.update((root / files[i][0]).read_bytes())
    return digest.hexdigest()[:16]


def data_fingerprints(config: Mapping[str, Any]) -> dict[str, str | None]:
    """The fingerprint of each data folder the config names (`folder_fingerprint`), None for a
    folder not set. A folder that does not exist is a ConfigError naming its key."""
    out = {}
    for name in DATA_FOLDERS:
        folder = ((config.get("datasets") or {}).get(name) or {}).get("dir")
        try:
            out[name] = None if not folder else folder_fingerprint(folder)
        except ConfigError as err:
            raise ConfigError(f"config key 'datasets.{name}.dir': {err}") from None
    return out


def hashed_view(
    config: Mapping[str, Any], fingerprints: Mapping[str, str | None] | None = None
) -> dict:
    """What the results version hashes: the resolved config without the keys of `NOT_HASHED`,
    each data folder's path replaced by its content fingerprint (`fingerprints`, computed from
    the config's folders when not given), and of download overrides only the pinned checksums
    (where a file comes from does not change it)."""
    fps = data_fingerprints(config) if fingerprints is None else dict(fingerprints)
    view = json.loads(json.dumps({k: v for k, v in config.items() if k not in NOT_HASHED}))
    datasets = view.get("datasets") or {}
    for name in DATA_FOLDERS:
        if name in datasets:
            datasets[name].pop("dir", None)
            datasets[name]["fingerprint"] = fps.get(name)
    (datasets.get("fashion_mnist") or {}).pop("download", None)  # where from, not what
    if isinstance(view.get("downloads"), dict):
        view["downloads"] = {
            k: (v.get("hash") if isinstance(v, dict) else v) for k, v in view["downloads"].items()
        }
    return view


def config_hash(
    config: Mapping[str, Any], fingerprints: Mapping[str, str | None] | None = None
) -> str:
    """Hash of the config's `hashed_view` (8 hex digits)."""
    text = json.dumps(hashed_view(config, fingerprints), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def version_of(
    config: Mapping[str, Any], fingerprints: Mapping[str, str | None] | None = None
) -> str:
    """The results folder name: the configured version, else '<profile>-<hash>'."""
    return config.get("version") or f"{config['profile']}-{config_hash(config, fingerprints)}"


#: Next to config.json in a results folder: the view of the config its results depend on.
HASHED_MARKER = "hashed_config.json"


def check_version_folder(
    folder: str | Path,
    config: Mapping[str, Any],
    fingerprints: Mapping[str, str | None] | None = None,
) -> None:
    """Refuse a results folder that holds another config's results (never overwrite them).
    Configs are compared as the version hashes them (`hashed_view`): a folder written with
    `threads: 8`, on another device or with the same data at another path is the same."""
    marker = Path(folder) / "config.json"
    if not marker.exists():
        return
    view = hashed_view(config, fingerprints)
    hashed = Path(folder) / HASHED_MARKER
    if hashed.exists():
        same = json.loads(hashed.read_text()) == view
    else:  # written before the hashed view was recorded: fingerprint its folders now
        recorded = json.loads(marker.read_text())
        try:
            same = hashed_view(recorded) == view
        except ConfigError:  # its data folder is gone: it cannot be shown to be the same
            same = False
    if not same:
        raise ConfigError(
            f"{folder} already holds results of a different config (see {marker}); "
            "results are never overwritten: set another 'version' (or null to derive one)."
        )


def claim_version_folder(
    folder: str | Path,
    config: Mapping[str, Any],
    fingerprints: Mapping[str, str | None] | None = None,
) -> None:
    """Check the folder, then record the config there (`config.json`, and the view of it the
    version hashes, `hashed_config.json`) for later runs."""
    fps = data_fingerprints(config) if fingerprints is None else fingerprints
    check_version_folder(folder, config, fps)
    marker = Path(folder) / "config.json"
    if not marker.exists():
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(json.dumps(config, sort_keys=True, indent=1) + "\n")
    hashed = Path(folder) / HASHED_MARKER
    if not hashed.exists():
        hashed.write_text(json.dumps(hashed_view(config, fps), sort_keys=True, indent=1) + "\n")
