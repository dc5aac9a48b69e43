"""The workflow end to end: smoke profile into a temp dir, versioned results, paper dry run."""

from __future__ import annotations

import csv
import json
import shutil

import pytest

from tests.conftest import ROOT, copy_workflow, snakemake

pytestmark = pytest.mark.slow  # real workflow runs: about a minute


def test_smoke_run_writes_every_result(smoke):
    wd, out, _ = smoke
    assert out.name.startswith("smoke-")
    rows = list(csv.DictReader((out / "compare.tsv").open(), delimiter="\t"))
    assert {"experiment", "id", "claim", "ours", "value", "interval", "null", "conditions"} <= set(
        rows[0]
    )
    assert {r["verdict"] for r in rows} <= {"pass", "fail", "inconclusive", "n/a"}
    rows = [r for r in rows if r["experiment"] == "filters"]
    assert len(rows) == 3 and all(r["verdict"] != "n/a" for r in rows)  # two colour runs
    assert sum(r["ours"].startswith("tower_photos") for r in rows) == 2
    (dichotomy,) = [r for r in rows if r["ours"].startswith("squeezenet:")]
    assert dichotomy["verdict"] == "pass"  # real ImageNet conv1: 75% at the ends vs 2% random

    metrics = json.loads((out / "metrics" / "filters.json").read_text())
    assert metrics["models"]["squeezenet"]["shape"] == [64, 3, 3, 3]
    assert metrics["models"]["tower_photos"]["groups"] == 2
    sq = json.loads((out / "metrics" / "models" / "squeezenet.json").read_text())
    assert all(c["correct"] for c in sq["imagenet_photo_check"].values())
    fm = json.loads((out / "metrics" / "models" / "tower_fmnist.json").read_text())
    assert fm["n_train"] == 1024 and fm["test_accuracy"] > 0.3  # learnt something real

    prov = json.loads((out / "provenance.json").read_text())
    assert prov["version"] == out.name
    assert prov["config"] == json.loads((out / "config.json").read_text())
    assert prov["start"] <= prov["end"]
    assert prov["packages"]["torch"] and prov["device"]["torch"]
    assert set(prov["git"]) == {"commit", "describe", "dirty"}
    for sub in ("models", "metrics", "figures", "logs", "benchmarks"):
        assert (out / sub).is_dir()
    assert (out / "references.bib").read_text().count("@") >= 11


UNIT_FIGURES = {
    "activations": ["allcnn_fmnist", "squeezenet"],
    "top_images": ["allcnn_fmnist", "squeezenet"],
    "deconvnet": ["tower_fmnist", "squeezenet"],
    "guided_backprop": ["allcnn_fmnist", "squeezenet"],
    "backprop": ["allcnn_fmnist", "squeezenet", "randomisation"],
    "occlusion": ["allcnn_fmnist", "squeezenet"],
    # what all units do
    "actmax": ["erhan", "yosinski"],
    "embedding": ["allcnn_fmnist", "allcnn_fmnist_thumbnails", "allcnn_fmnist_units"],
    "inversion_dip": ["tower_fmnist", "squeezenet"],
    "inversion_learned": ["tower_fmnist"],
    # how units matter
    "ablation": ["allcnn_fmnist_conv8", "tower_fmnist_conv5"],
}


def test_smoke_run_writes_the_unit_figures_and_their_claims(smoke):
    wd, out, _ = smoke
    for experiment, names in UNIT_FIGURES.items():
        for name in names:
            png = out / "figures" / experiment / f"{name}.png"
            assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
        metrics = json.loads((out / "metrics" / f"{experiment}.json").read_text())
        assert metrics["claims"], experiment
    rows = list(csv.DictReader((out / "compare.tsv").open(), delimiter="\t"))
    by_experiment = {e: [r for r in rows if r["experiment"] == e] for e in UNIT_FIGURES}
    assert all(by_experiment.values())  # every unit experiment has compare rows
    # every claim is measured except the CIFAR-10 error of a net trained on Fashion-MNIST and
    # the data randomisation of a net that has not memorised its permuted labels
    (error,) = [r for r in rows if "9.08%" in r["claim"]]
    assert error["verdict"] == "n/a" and "trained on fashion_mnist" in error["reason"]
    (shuffled,) = [r for r in rows if r["id"] == "guided_insensitive_to_label_randomisation"]
    assert shuffled["verdict"] == "n/a" and "has not memorised" in shuffled["reason"]
    others = [r for e in UNIT_FIGURES for r in by_experiment[e] if r not in (error, shuffled)]
    assert all(r["verdict"] != "n/a" and r["ours"] and r["conditions"] for r in others)
    top = json.loads((out / "metrics" / "top_images.json").read_text())
    assert "offline stand-in" in top["models"]["squeezenet"]["probe"]
    assert top["models"]["allcnn_fmnist"]["images"] == 256  # max_images of the smoke profile
    sanity = json.loads((out / "metrics" / "backprop.json").read_text())["sanity"]
    assert set(sanity["mean_spearman"]) == {"backprop", "deconvnet", "guided_backprop"}


def test_smoke_run_measures_what_all_units_do(smoke):
    wd, out, _ = smoke
    act = json.loads((out / "metrics" / "actmax.json").read_text())
    assert set(act["erhan"]["models"]) == {"sdae_mnist", "mlp_mnist"}  # pretrained, supervised
    for model in act["erhan"]["models"].values():  # ascent raised every layer's units
        for layer in model["layers"].values():
            assert layer["activation_final_mean"] > layer["activation_start_mean"]
    assert set(act["yosinski"]["settings"]) == {"1", "4"}
    assert all(s["iterations"] == 3 for s in act["yosinski"]["settings"].values())
    emb = json.loads((out / "metrics" / "embedding.json").read_text())
    assert emb["tsne"]["perplexity"] == 40 and emb["tsne"]["iterations"] == 120
    assert emb["models"]["allcnn_fmnist"]["images"] == 300
    dip = json.loads((out / "metrics" / "inversion_dip.json").read_text())
    assert dip["models"]["squeezenet"]["size"] == 48
    assert set(dip["models"]["tower_fmnist"]["layers"]) == {"input", "conv3", "fc7"}
    learned = json.loads((out / "metrics" / "inversion_learned.json").read_text())
    for row in learned["models"]["tower_fmnist"]["layers"].values():
        assert set(row) == {f"{loss}_{m}" for loss in ("pixel", "perceptual")
                            for m in ("pixel_rmse", "feature_error")}  # fmt: skip
        assert 0 < row["pixel_pixel_rmse"] < 0.5


def test_smoke_run_dissects_on_the_offline_concept_probe(smoke):
    wd, out, _ = smoke
    for name in ("detectors", "headlines", "tower_photos", "squeezenet"):
        png = out / "figures" / "dissection" / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    metrics = json.loads((out / "metrics" / "dissection.json").read_text())
    assert metrics["probe"] == "standin" and set(metrics["rules"]) == {"top_label", "per_category"}
    assert (metrics["scoring"], metrics["upsample"]) == ("original", "fieldmap")
    fire9 = metrics["models"]["squeezenet"]["layers"]["fire9"]["fieldmap"]
    assert fire9 == [[-88, -88], [207, 207], [16, 16]]  # SqueezeNet 1.1's geometry, derived
    for name, layers in (("tower_photos", {"conv1", "conv5"}), ("squeezenet", {"fire9"})):
        model = metrics["models"][name]
        assert set(model["layers"]) == layers and "24 images" in model["probe"]
        assert set(model["random_seeds"]["seed"]) == {"0", "1"}  # smoke: random_copies 2
        assert set(model["rotations"]["alpha"]) == {"0", "1"}
        unrotated = model["layers"][max(layers)]["trained"]  # alpha 0: the deepest layer
        assert model["rotations"]["alpha"]["0"] == {
            "per_category": unrotated["per_category"]["unique"],
            "top_label": unrotated["top_label"]["unique"],
            "units": unrotated["top_label"]["units"],
        }
        for layer in model["layers"].values():
            assert set(layer) == {"trained", "random", "fieldmap"}
            for rule in ("top_label", "per_category"):
                counts = layer["trained"][rule]
                assert counts["unique"] == sum(counts["by_category"].values())
        assert set(model["seconds"]["trained"]) >= {"decode", "forward", "quantile", "tally"}
        rows = list(csv.DictReader((out / "tables" / "dissection" / f"{name}.csv").open()))
        units = {"tower_photos": 16 + 32, "squeezenet": 512}[name]  # smoke widths
        assert len(rows) == 2 * units and {r["weights"] for r in rows} == {"trained", "random"}
    rows = list(csv.DictReader((out / "compare.tsv").open(), delimiter="\t"))
    snaps = metrics["models"]["tower_photos"]["snapshots"]
    assert set(snaps["step"]) == {"0", "8"} and snaps["layer"] == "conv5"
    assert snaps["end_step"] == 16  # smoke: 1024 patches in batches of 64, one epoch
    assert "snapshots" not in metrics["models"]["squeezenet"]  # imported: no training
    rows = {r["claim"]: r for r in rows if r["experiment"] == "dissection"}
    assert len(rows) == 6
    released = [r for r in rows.values() if "released" in r["claim"]]
    assert len(released) == 2 and all(r["verdict"] == "n/a" for r in released)
    assert "stand-in" in " ".join(r["reason"] for r in released)
    measured = [r for r in rows.values() if r not in released]  # verdicts: SMOKE_VERDICTS
    assert all(r["verdict"] != "n/a" and r["ours"] for r in measured)


def test_smoke_run_ablates_every_unit(smoke):
    wd, out, _ = smoke
    metrics = json.loads((out / "metrics" / "ablation.json").read_text())
    conv8 = metrics["models"]["allcnn_fmnist"]["layers"]["conv8"]
    units = 24  # All-CNN-C conv8 at the smoke width 0.125
    assert conv8["units"] == units and conv8["images"] == 256 and conv8["linear_update"]
    for key in ("overall_drop", "max_class_drop", "max_class", "selectivity"):
        assert len(conv8[key]) == units
    assert all(0 <= s <= 1 for s in conv8["selectivity"])
    cum = conv8["cumulative"]
    assert cum["removed"][0] == 0 and cum["removed"][-1] == units
    assert cum["by_importance"][0] == conv8["base_accuracy"]
    tower = metrics["models"]["tower_fmnist"]["layers"]["conv5"]
    assert tower["linear_update"]  # fc6, through the max-pool and the flatten after conv5


def test_smoke_run_trains_a_language_model_and_measures_its_context(smoke):
    wd, out, _ = smoke
    lm = json.loads((out / "metrics" / "models" / "lm_prose.json").read_text())
    assert lm["corpus"] == "prose" and lm["vocab_size"] == 500
    assert len(lm["history"]) == 2 and lm["train_tokens_per_epoch"] == 8000
    assert 1 < lm["test_perplexity"] < 500  # learnt something: below the vocabulary size
    assert not (out / "models" / "partial" / "lm_prose.pt").exists()
    metrics = json.loads((out / "metrics" / "lm_context.json").read_text())
    r = metrics["models"]["lm_prose"]
    assert r["targets"] == 24 and r["restriction"]["sizes"] == [1, 5, 20, 100]
    assert r["perturbation"]["boundaries"] == [1, 5, 20]
    assert set(r["perturbation"]["increase"]) == {
        "shuffle_local", "reverse_local", "shuffle_global", "reverse_global",
        "drop_function", "drop_content", "replace",
    }  # fmt: skip
    assert r["speed"]["targets_scored"] == 24 * (4 + 1 + 7 * 3)
    png = out / "figures" / "lm_context" / "lm_prose.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20000
    rows = {
        r["claim"]: r
        for r in csv.DictReader((out / "compare.tsv").open(), delimiter="\t")
        if r["experiment"] == "lm_context"
    }
    assert len(rows) == 9
    perplexity = [r for r in rows.values() if r["citation"] == "merity2018"]
    assert len(perplexity) == 2 and all(r["verdict"] == "n/a" for r in perplexity)
    assert all(r["conditions"] for r in rows.values())  # verdicts: SMOKE_VERDICTS


#: Each claim's verdict on the smoke profile (deterministic on the CPU: a change of a verdict
#: is a change of what the suite measures, to be explained, never a silent drift). Tiny nets
#: trained for seconds: most claims fail or are inconclusive here, as they should.
SMOKE_VERDICTS = {
    "guided_insensitive_to_randomisation": "inconclusive",
    "guided_insensitive_to_label_randomisation": "n/a",
    "trained_more_detectors": "fail",
    "rotation_destroys_detectors": "fail",
    "detectors_rise_with_training": "fail",
    "high_level_rises_with_depth": "inconclusive",
    "released_unique_detectors": "n/a",
    "released_unit_labels": "n/a",
    "learned_error_grows_with_depth": "fail",
    "perceptual_higher_pixel_error": "fail",
    "perceptual_lower_feature_error": "fail",
    "random_starts_converge": "inconclusive",
    "effective_context": "fail",
    "order_matters_only_nearby": "fail",
    "local_order_nearby": "fail",
    "content_needs_more_context": "inconclusive",
    "rare_needs_more_context": "n/a",
    "content_words_matter_far": "fail",
    "far_context_is_topic": "fail",
    "group_contrast": "fail",
    "agnostic_group_median": "fail",
    "imagenet_colour_dichotomy": "pass",
    "ptb_test_perplexity": "n/a",
    "wt2_test_perplexity": "n/a",
    "saliency_on_object": "inconclusive",
    "guided_sharper_than_backprop": "pass",
    "guided_sharper_than_deconvnet": "pass",
    "all_cnn_c_test_error": "n/a",
    "dip_error_grows_with_depth": "inconclusive",
    "dip_closer_than_tv": "inconclusive",
    "tsne_beats_pca_knn_accuracy": "pass",
    "tsne_beats_pca_trustworthiness": "pass",
    "deeper_layers_sparser": "pass",
    "regularised_visualisations_classified": "inconclusive",
    "deeper_layers_class_specific": "inconclusive",
    "switches_keep_image_structure": "inconclusive",
    "object_occlusion_hurts_more": "inconclusive",
    "single_unit_overall_drop_small": "pass",
    "class_drop_much_larger": "pass",
    "selectivity_predicts_class_drop": "fail",
    "unit_hurts_its_selective_class_most": "inconclusive",
    "importance_order_beats_random": "inconclusive",
    "l1_norm_predicts_class_drop": "inconclusive",
}

#: Panels of each figure of the smoke profile (axes that draw something), read from the PNG.
FIGURE_PANELS = {
    "ablation/allcnn_fmnist_conv8.png": 7,
    "ablation/tower_fmnist_conv5.png": 7,
    "activations/allcnn_fmnist.png": 3,
    "activations/squeezenet.png": 3,
    "actmax/erhan.png": 24,
    "actmax/yosinski.png": 2,
    "backprop/allcnn_fmnist.png": 8,
    "backprop/allcnn_fmnist_shuffled.png": 8,
    "backprop/randomisation.png": 1,
    "backprop/squeezenet.png": 8,
    "deconvnet/squeezenet.png": 12,
    "deconvnet/tower_fmnist.png": 24,
    "dissection/detectors.png": 2,
    "dissection/headlines.png": 3,
    "dissection/squeezenet.png": 4,
    "dissection/tower_photos.png": 4,
    "embedding/allcnn_fmnist.png": 3,
    "embedding/allcnn_fmnist_thumbnails.png": 1,
    "embedding/allcnn_fmnist_units.png": 24,
    "filters/colour_selectivity.png": 1,
    "filters/squeezenet.png": 1,
    "filters/tower_fmnist.png": 2,
    "filters/tower_photos.png": 2,
    "filters/tower_photos_s1.png": 2,
    "guided_backprop/allcnn_fmnist.png": 32,
    "guided_backprop/squeezenet.png": 16,
    "inversion_dip/squeezenet.png": 6,
    "inversion_dip/tower_fmnist.png": 8,
    "inversion_learned/tower_fmnist.png": 12,
    "lm_context/lm_prose.png": 4,
    "occlusion/allcnn_fmnist.png": 6,
    "occlusion/squeezenet.png": 6,
    "top_images/allcnn_fmnist.png": 16,
    "top_images/squeezenet.png": 16,
}


def test_smoke_verdicts_are_pinned(smoke):
    wd, out, _ = smoke
    rows = list(csv.DictReader((out / "compare.tsv").open(), delimiter="\t"))
    assert {r["id"]: r["verdict"] for r in rows} == SMOKE_VERDICTS
    for r in rows:
        if r["verdict"] in ("pass", "fail", "inconclusive"):
            assert r["value"] and r["interval"] and r["conditions"], r["id"]
    html = (out / "compare.html").read_text()
    assert html.count("<tr") == len(rows) + 1


def test_smoke_figures_show_what_their_captions_say(smoke):
    """Every figure's panels, read back from the PNG (figures.save writes what it drew): the
    count each caption promises, and no constant map except the label map of a net that
    predicts one label everywhere (the smoke nets are at chance)."""
    from cvinterp.figures import read_contents

    wd, out, _ = smoke
    found = {str(p.relative_to(out / "figures")): p for p in (out / "figures").rglob("*.png")}
    assert set(found) == set(FIGURE_PANELS)
    for name, path in found.items():
        shown = read_contents(path)
        assert shown["panels"] == FIGURE_PANELS[name], name
        for i in shown["constant_panels"]:
            assert shown["titles"][i].startswith("most likely label"), (name, shown["titles"][i])
    occlusion = read_contents(found["occlusion/squeezenet.png"])
    assert occlusion["titles"][1].startswith("p(true)") and not occlusion["constant_panels"]
    guided = read_contents(found["guided_backprop/squeezenet.png"])
    assert guided["titles"][:4] == ["image", "backprop", "deconvnet", "guided"]
    tsne = read_contents(found["embedding/allcnn_fmnist.png"])
    assert tsne["titles"][0].startswith("t-SNE") and tsne["titles"][1].startswith("PCA")


def test_rerun_does_nothing_and_other_configs_get_their_own_folder(smoke):
    wd, out, shared = smoke
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    res = snakemake(wd, "--configfile", "config/smoke.yaml", "-c", "2", "--config", shared)
    assert res.returncode == 0 and "Nothing to be done" in res.stdout + res.stderr

    res = snakemake(wd, "--configfile", "config/smoke.yaml", "-n", "--config", shared, "seed=1")
    assert res.returncode == 0
    plan = res.stdout + res.stderr
    assert "results/smoke-" in plan and f"results/{out.name}/" not in plan

    res = snakemake(
        wd,
        "--configfile",
        "config/smoke.yaml",
        "-c",
        "1",
        "--config",
        shared,
        "seed=2",
        f"version={out.name}",
    )
    assert res.returncode != 0 and "never overwritten" in res.stdout + res.stderr
    after = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    assert after == before  # nothing in the first version was touched


def test_bad_config_key_fails_at_once_naming_it(smoke):
    wd, _, shared = smoke
    res = snakemake(wd, "--configfile", "config/smoke.yaml", "-n", "--config", shared, "seeed=3")
    assert res.returncode != 0 and "unknown config key 'seeed'" in res.stdout + res.stderr


@pytest.fixture(scope="module")
def report(smoke, tmp_path_factory):
    """The smoke run's `snakemake --report` page, built once."""
    wd, _, shared = smoke
    page = tmp_path_factory.mktemp("report") / "report.html"
    res = snakemake(
        wd, "--configfile", "config/smoke.yaml", "--config", shared, "--report", str(page)
    )
    assert res.returncode == 0, res.stderr[-2000:]
    return page


def test_report_has_every_figure_and_the_table(report):
    html = report.read_text()
    for name in (
        "tower_fmnist.png",
        "squeezenet.png",
        "colour_selectivity.png",
        "compare.tsv",
        "compare.html",
        "references.bib",
        "randomisation.png",
        "lm_prose.png",
    ):
        assert name in html
    assert "Krizhevsky" in html


def test_paper_profile_plans_without_touching_the_network(tmp_path):
    wd = tmp_path / "wf"
    wd.mkdir()
    copy_workflow(wd)
    guard = tmp_path / "guard"
    guard.mkdir()
    (guard / "sitecustomize.py").write_text(
        "import socket\n"
        "def _no(*a, **k):\n"
        "    raise RuntimeError('network access during a dry run')\n"
        "socket.socket.connect = _no\n"
        "socket.getaddrinfo = _no\n"
        "socket.create_connection = _no\n"
    )
    res = snakemake(wd, "-n", "--configfile", "config/paper.yaml", env={"PYTHONPATH": str(guard)})
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    plan = res.stdout + res.stderr
    assert "results/paper-" in plan and "models/alexnet.pt" in plan
    # without the ImageNet folder (as shipped) the experiments that need it are left out
    needs_imagenet = ("inversion_learned", "ablation")
    for experiment in [*UNIT_FIGURES, "dissection", "get_broden", "lm_context"]:
        if experiment not in needs_imagenet:
            assert f"rule {experiment}:" in plan
    assert not any(f"rule {e}:" in plan for e in needs_imagenet)
    assert "rule language_model:" in plan and "rule get_wikitext2:" in plan
    assert "downloads/broden1_224.zip" in plan  # AlexNet and VGG16 take 224-px images
    for name in ("ptb.train.txt", "ptb.valid.txt", "ptb.test.txt", "wikitext-2-v1.zip"):
        assert f"downloads/{name}" in plan
    # Khandelwal et al.'s tags of the validation split lm_context analyses, not the test split's
    for name in ("ptb.pos.valid.txt", "wikitext-2.pos.valid.txt"):
        assert f"downloads/{name}" in plan
    assert "pos.test.txt" not in plan
    assert "models/awd_lstm_ptb.pt" in plan and "models/awd_lstm_wt2.pt" in plan
    assert not (wd / "results").exists() and not (wd / "resources").exists()


def chromium_driver():
    """Headless Chromium (Debian's chromium + chromium-driver) through Selenium, or a skip that
    says what to install (.ci/run installs them)."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="pip install selenium")
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    browser, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (browser and driver):
        pytest.skip("headless Chromium missing: apt-get install chromium chromium-driver")
    options = Options()
    options.binary_location = browser
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(driver), options=options)


# In the page: decode every embedded PNG as the browser draws it, and read the comparison table.
RENDER_ALL = """
const done = arguments[arguments.length - 1];
const entries = Object.entries(results);
const figures = entries.filter(([k, r]) => r.mime_type === "image/png");
Promise.all(figures.map(([key, r]) => new Promise(resolve => {
  const img = new Image();
  img.onload = () => resolve([key, img.naturalWidth, img.naturalHeight]);
  img.onerror = () => resolve([key, 0, 0]);
  img.src = r.data_uri;
}))).then(sizes => {
  const table = entries.find(([k, r]) => k.endsWith("compare.tsv"))[1];
  const bytes = Uint8Array.from(atob(table.data_uri.split(",")[1]), c => c.charCodeAt(0));
  done({sizes: sizes, table: new TextDecoder().decode(bytes), categories: categories});
});
"""


def test_report_renders_every_figure_and_the_whole_table_in_a_browser(smoke, report):
    import yaml
    from selenium.webdriver.common.by import By

    wd, out, _ = smoke
    browser = chromium_driver()
    try:
        browser.set_script_timeout(120)
        browser.get(report.as_uri())
        page = browser.find_element(By.TAG_NAME, "body").text
        assert "Comparison with the papers" in page  # the app itself rendered
        got = browser.execute_async_script(RENDER_ALL)
        for category in got["categories"]:  # the menu lists every category of results
            assert category in page, category
        errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    finally:
        browser.quit()
    assert not errors, errors
    figures = {p.relative_to(wd).as_posix() for p in out.rglob("figures/**/*.png")}
    rendered = {key: (w, h) for key, w, h in got["sizes"]}
    assert set(rendered) == figures  # every figure of the run is in the report
    assert all(w > 50 and h > 50 for w, h in rendered.values()), rendered
    claims = [
        c["claim"]
        for f in sorted((ROOT / "config" / "claims").glob("*.yaml"))
        for c in yaml.safe_load(f.read_text())["claims"]
    ]
    listed = {row.split("\t")[2] for row in got["table"].strip().splitlines()[1:]}
    assert set(claims) == listed  # the table lists every claim, nothing else
