"""The experiments layer: one module per rule, read as declaration, compute, figures, claims; the
workflow and the config checks learn everything from the registry, nothing by name."""

from __future__ import annotations

import ast
import re

import pytest
import yaml

from cvinterp.config import resolve
from cvinterp.experiments import EXPERIMENTS, common, declaration
from tests.conftest import ROOT, SCHEMA

SRC = ROOT / "src" / "cvinterp" / "experiments"


def test_the_registry_is_every_experiment_module_named_as_its_rule():
    modules = {p.stem for p in SRC.glob("*.py")} - {"__init__", "common"}
    assert set(EXPERIMENTS) == modules
    for name, module in EXPERIMENTS.items():
        assert module.__name__ == f"cvinterp.experiments.{name}"
        assert isinstance(module.DECLARATION, common.Declaration), name


@pytest.mark.parametrize("name", list(EXPERIMENTS))
def test_each_module_reads_compute_figures_claims_in_that_order(name):
    tree = ast.parse((SRC / f"{name}.py").read_text())
    public = [n.name for n in tree.body if isinstance(n, ast.FunctionDef) and n.name[0] != "_"]
    parts = [p for p in public if p in ("compute", "figures", "tables", "claims")]
    expected = ["compute", "figures", "claims"]
    if declaration(name).tables({"models": {"m": {}}}):
        expected.insert(2, "tables")
    assert parts == expected, name
    assert ast.get_docstring(tree), f"{name}: a module docstring naming its paper"


def test_no_experiment_imports_another_experiment_or_a_private_name():
    for path in SRC.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and "experiments" in node.module:
                if path.stem == "__init__":
                    continue
                assert node.module == "cvinterp.experiments.common", (path.name, node.module)
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("cvinterp"):
                private = [a.name for a in node.names if a.name.startswith("_")]
                assert not private, (path.name, node.module, private)


def test_every_experiment_has_a_schema_section_a_rule_a_caption_and_claims():
    schema = yaml.safe_load(SCHEMA.read_text())["properties"]["experiments"]["properties"]
    rules = "".join(p.read_text() for p in (ROOT / "workflow" / "rules").glob("*.smk"))
    claimed = {
        c["experiment"]
        for f in (ROOT / "config" / "claims").glob("*.yaml")
        for c in yaml.safe_load(f.read_text())["claims"]
    }
    for name in EXPERIMENTS:
        assert "models" in schema[name]["required"], name
        assert re.search(rf"^    rule {name}:$", rules, re.M), name
        assert (ROOT / "workflow" / "report" / f"{name}.rst").exists(), name
        for caption in declaration(name).captions.values():
            assert (ROOT / "workflow" / "report" / f"{caption}.rst").exists(), caption
        assert name in claimed, name


@pytest.mark.parametrize("profile", ["config", "paper", "smoke"])
def test_declared_figures_tables_and_references_follow_the_settings(profile):
    cfg = resolve(yaml.safe_load((ROOT / "config" / f"{profile}.yaml").read_text()), SCHEMA)
    for name, settings in cfg["experiments"].items():
        d = declaration(name)
        figures = d.figures(settings)
        assert figures and len(set(figures)) == len(figures), name
        for ref in d.model_references:
            value = settings
            for part in ref.split("."):
                value = (value or {}).get(part)
            assert value is None or value in settings["models"], (name, ref)
        assert set(d.training_metrics(settings)) <= set(settings["models"]), name
        assert set(d.tables(settings)) <= set(settings["models"]), name
