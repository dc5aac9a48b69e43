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
from jsonschema import Draft202012Validator, validators


class ConfigError(ValueError):
    """A config that does not match the schema; the message names the offending key."""


def _with_defaults(validator_class):
    """A validator that fills `default` values of properties while it validates."""
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for name, sub in properties.items():
                if isinstance(sub, dict) and "default" in sub and name not in instance:
                    instance[name] = copy.deepcopy(sub["default"])
        yield from validate_properties(validator, properties, instance, schema)

    return validators.extend(validator_class, {"properties": set_defaults})


_FillingValidator = _with_defaults(Draft202012Validator)


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

    Raises ConfigError listing every problem, each naming its key.
    """
    resolved = copy.deepcopy(dict(config))
    validator = _FillingValidator(load_schema(schema_path))
    errors = sorted(validator.iter_errors(resolved), key=lambda e: list(e.absolute_path))
    if errors:
        lines = "\n".join(f"  - {_describe(e)}" for e in errors)
        raise ConfigError(f"invalid config ({len(errors)} problem(s)):\n{lines}")
    _check_references(resolved)
    return resolved


def _named_models(exp: dict) -> list[tuple[str, str, list[str]]]:
    """(key path, model, layers) for every model an experiment names."""
    out = [("models", m, []) for m in exp.get("models", []) if isinstance(m, str)]
    if isinstance(exp.get("models"), dict):  # occlusion: model -> settings
        out += [(f"models.{m}", m, [s["layer"]]) for m, s in exp["models"].items()]
    out += [(f"layers.{m}", m, layers) for m, layers in exp.get("layers", {}).items()]
    for key in ("test_error_model",):
        if exp.get(key):
            out.append((key, exp[key], []))
    if exp.get("sanity"):
        out.append(("sanity.model", exp["sanity"]["model"], []))
    for key in ("erhan", "yosinski"):  # actmax
        sub = exp.get(key)
        if isinstance(sub, dict):
            layers = sub.get("layers") or ([sub["layer"]] if sub.get("layer") else [])
            out.append((f"{key}.model", sub["model"], layers))
    return out


def _check_references(config: dict) -> None:
    """Cross-field checks a JSON schema cannot express: experiments name existing models and
    their named layers."""
    from cvinterp.models import zoo

    models = config["models"]
    _check_language_models(config)
    for name, exp in config["experiments"].items():
        if name == "lm_context":  # names language models, checked above
            continue
        for key, m, layers in _named_models(exp):
            if m not in models:
                raise ConfigError(
                    f"config key 'experiments.{name}.{key}' names model '{m}', which is not "
                    f"defined under 'models' (defined: {', '.join(sorted(models))})"
                )
            known = list(zoo()[models[m]["arch"]]["layers"])
            if name.startswith("inversion"):
                known.append("input")  # the identity: inversion must give the image back
            bad = [layer for layer in layers if layer not in known]
            if bad:
                raise ConfigError(
                    f"config key 'experiments.{name}.{key}': {', '.join(map(repr, bad))} is not "
                    f"a named layer of {models[m]['arch']} (named: {', '.join(known)})"
                )
        listed = exp.get("models", [])
        for m in exp.get("sizes", {}):
            if m not in exp.get("layers", {}):
                raise ConfigError(
                    f"config key 'experiments.{name}.sizes.{m}': '{m}' must also be listed in "
                    f"'experiments.{name}.layers'"
                )
        for m, per_layer in (exp.get("references") or {}).items():
            for layer in per_layer:
                if layer not in exp.get("layers", {}).get(m, []):
                    raise ConfigError(
                        f"config key 'experiments.{name}.references.{m}.{layer}': model '{m}' "
                        f"layer '{layer}' must also be listed in 'experiments.{name}.layers'"
                    )
        for key in ("test_error_model",):
            if exp.get(key) and exp[key] not in exp.get("layers", {}):
                raise ConfigError(
                    f"config key 'experiments.{name}.{key}': '{exp[key]}' must also be listed "
                    f"in 'experiments.{name}.layers'"
                )
        if exp.get("sanity") and exp["sanity"]["model"] not in listed:
            raise ConfigError(
                f"config key 'experiments.{name}.sanity.model': '{exp['sanity']['model']}' "
                f"must also be listed in 'experiments.{name}.models'"
            )
        if exp.get("colour_model") and exp["colour_model"] not in exp.get("models", []):
            raise ConfigError(
                f"config key 'experiments.{name}.colour_model': '{exp['colour_model']}' must also "
                f"be listed in 'experiments.{name}.models'"
            )
        wanted = list(exp.get("models", []))
        if exp.get("colour_model"):
            wanted.append(exp["colour_model"])
        for m in wanted:
            if m not in models:
                raise ConfigError(
                    f"config key 'experiments.{name}' names model '{m}', which is not defined "
                    f"under 'models' (defined: {', '.join(sorted(models))})"
                )


def _check_language_models(config: dict) -> None:
    """Language-model names are their own namespace: they must not shadow an image model, and
    lm_context must name defined ones; its boundaries must lie inside its context window."""
    lms = config.get("language_models", {})
    clash = sorted(set(lms) & set(config["models"]))
    if clash:
        raise ConfigError(
            f"config key 'language_models.{clash[0]}': the name is also used under 'models' "
            "(checkpoints share results/<version>/models/): rename one of them"
        )
    exp = config["experiments"].get("lm_context")
    if not exp:
        return
    defined = ", ".join(sorted(lms)) or "none"
    for m in exp["models"]:
        if m not in lms:
            raise ConfigError(
                f"config key 'experiments.lm_context.models' names language model '{m}', which "
                f"is not defined under 'language_models' (defined: {defined})"
            )
    too_far = [b for b in exp["boundaries"] if b >= exp["perturb_context"]]
    if too_far:
        raise ConfigError(
            f"config key 'experiments.lm_context.boundaries': {too_far} leave nothing to perturb "
            f"in a perturb_context of {exp['perturb_context']} tokens (each must be smaller)"
        )


def check_released_references(config: Mapping[str, Any], released: Mapping[str, Any]) -> None:
    """experiments.dissection.references must name entries of the released results
    (config/netdissect/released.yaml); same_weights needs an entry with per-unit labels."""
    exp = config.get("experiments", {}).get("dissection") or {}
    for m, per_layer in (exp.get("references") or {}).items():
        for layer, ref in per_layer.items():
            key = f"experiments.dissection.references.{m}.{layer}"
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
