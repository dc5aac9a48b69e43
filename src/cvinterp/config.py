"""Validate a profile once, fill its defaults, and derive the results version.

Everything downstream receives plain function arguments taken from the resolved config;
no module of cvinterp reads settings on its own.
"""

from __future__ import annotations

import copy
import hashlib
import json
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


# Keys that name or place a run but do not change what it computes.
NOT_HASHED = ("version", "resources_dir")


def _science(config: Mapping[str, Any]) -> dict:
    return {k: v for k, v in config.items() if k not in NOT_HASHED}


def config_hash(config: Mapping[str, Any]) -> str:
    """Hash of the resolved config without `version` and `resources_dir` (8 hex digits)."""
    payload = _science(config)
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def version_of(config: Mapping[str, Any]) -> str:
    """The results folder name: the configured version, else '<profile>-<hash>'."""
    return config.get("version") or f"{config['profile']}-{config_hash(config)}"


def check_version_folder(folder: str | Path, config: Mapping[str, Any]) -> None:
    """Refuse a results folder that holds another config's results (never overwrite them)."""
    marker = Path(folder) / "config.json"
    recorded = json.loads(marker.read_text()) if marker.exists() else None
    if recorded is not None and _science(recorded) != json.loads(json.dumps(_science(config))):
        raise ConfigError(
            f"{folder} already holds results of a different config (see {marker}); "
            "results are never overwritten: set another 'version' (or null to derive one)."
        )


def claim_version_folder(folder: str | Path, config: Mapping[str, Any]) -> None:
    """Check the folder, then record the config there (`config.json`) for later runs."""
    check_version_folder(folder, config)
    marker = Path(folder) / "config.json"
    if not marker.exists():
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(json.dumps(config, sort_keys=True, indent=1) + "\n")
