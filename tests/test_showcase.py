"""make docs: the README's table and figures come from a results folder, naming its version."""

import json

import numpy as np
import pytest
from PIL import Image

from cvinterp.compare import COLUMNS, write_table
from cvinterp.showcase import END, START, refresh


def fake_results(root):
    row = {c: "" for c in COLUMNS}
    row.update(experiment="occlusion", claim="a | b", verdict="inconclusive", citation="z2014")
    row.update(value="0.2", interval="[-0.1, 0.5]", null="0", conditions="Fashion-MNIST")
    write_table([row, {**row, "verdict": "pass"}], root / "compare.tsv")
    (root / "figures" / "occlusion").mkdir(parents=True)
    Image.fromarray(np.zeros((300, 1200, 3), np.uint8)).save(
        root / "figures/occlusion/allcnn_fmnist.png"
    )
    prov = {
        "version": "def19",
        "git": {"describe": "abc1234"},
        "start": "2026-12-01T07:00:00+00:00",
        "end": "2026-12-01T07:19:00+00:00",
        "device": {"cpu_count": 2},
    }
    (root / "provenance.json").write_text(json.dumps(prov))


def test_refresh_rewrites_only_the_marked_block(tmp_path):
    results, docs, readme = tmp_path / "r", tmp_path / "docs", tmp_path / "README.md"
    results.mkdir()
    fake_results(results)
    readme.write_text(f"# x\n\n{START}\nold\n{END}\n\n## after\n")
    written = refresh(results, docs, readme)
    text = readme.read_text()
    assert "old" not in text and text.endswith("## after\n") and "version `def19`" in text
    assert "1 pass, 0 fail, 1 inconclusive, 0 n/a" in text and "a \\| b" in text
    png = docs / "figures" / "occlusion_allcnn_fmnist.png"
    assert png in written and Image.open(png).width == 480
    assert "def19" in (docs / "compare.md").read_text()


def test_refresh_needs_a_finished_run_and_the_markers(tmp_path):
    with pytest.raises(FileNotFoundError, match="run the workflow"):
        refresh(tmp_path, tmp_path / "docs", tmp_path / "README.md")
    fake_results(tmp_path)
    (tmp_path / "README.md").write_text("no markers\n")
    with pytest.raises(ValueError, match="lacks the markers"):
        refresh(tmp_path, tmp_path / "docs", tmp_path / "README.md")
