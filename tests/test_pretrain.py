"""Greedy layer-wise denoising auto-encoder pretraining (Vincent et al. 2008), checked against its
definition, and Erhan et al. 2009's activation maximisation on the pretrained net beside a
supervised one."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import yaml

import cvinterp.train as train_module
from cvinterp.compare import build_table
from cvinterp.config import ConfigError, resolve
from cvinterp.data import load_images
from cvinterp.experiments import Model, Probe, run
from cvinterp.models import build, load_checkpoint, save_checkpoint
from cvinterp.models.make import make_model
from cvinterp.models.mlp import MLP
from cvinterp.train import denoising_loss, masking_noise, pretrain_denoising_autoencoders
from tests.conftest import ROOT, SCHEMA

pytestmark = pytest.mark.usefixtures("one_thread")

HIDDEN = [24, 16, 8]
ARGS = dict(corruption=0.25, epochs=3, batch_size=20, lr=0.1, seed=0, device=torch.device("cpu"))


def data():
    return load_images("mnist5k", "train")[::4], load_images("mnist5k", "test")[::4]


def pixels(images) -> torch.Tensor:
    return torch.as_tensor(images).float().flatten(1) / 255


@pytest.fixture(scope="module")
def full_run():
    """One pretraining, with what every training step of the loss saw (its clean input, its
    corruption, the weights it trained)."""
    calls = []

    def recording(clean, corrupted, weight, bias, decoder_bias):
        if torch.is_grad_enabled():  # a training step, not the test loss
            calls.append((clean.detach().clone(), corrupted.detach().clone(), weight.shape))
        return denoising_loss(clean, corrupted, weight, bias, decoder_bias)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(train_module, "denoising_loss", recording)
        model, pre, metrics = pretrain_denoising_autoencoders(
            "mlp", {"hidden": HIDDEN}, *data(), **ARGS, progress=False
        )
    return model, pre, metrics, calls


def test_masking_noise_zeroes_the_given_fraction_of_each_row():
    x = torch.rand(50, 784) + 0.5  # no zeros of its own
    noisy = masking_noise(x, 0.25, torch.Generator().manual_seed(3))
    zeros = noisy == 0
    assert (zeros.sum(1) == round(0.25 * 784)).all()  # a fixed number per row (Vincent et al.)
    assert torch.equal(noisy[~zeros], x[~zeros])  # the others are left as they are
    assert len({tuple(row.nonzero().flatten().tolist()) for row in zeros}) == 50  # random choice
    again = masking_noise(x, 0.25, torch.Generator().manual_seed(3))
    assert torch.equal(noisy, again)
    assert torch.equal(masking_noise(x, 0.0, torch.Generator()), x)


def test_denoising_loss_is_the_cross_entropy_of_the_tied_weight_reconstruction():
    torch.manual_seed(0)
    w = torch.randn(7, 12, dtype=torch.float64, requires_grad=True)
    b, c = torch.randn(7, dtype=torch.float64), torch.randn(12, dtype=torch.float64)
    x = torch.rand(5, 12, dtype=torch.float64)
    x_noisy = masking_noise(x, 0.25, torch.Generator().manual_seed(0))
    h = torch.sigmoid(x_noisy @ w.T + b)
    r = torch.sigmoid(h @ w + c)  # decoded with W^T: the encoder's own weights
    expected = -(x * r.log() + (1 - x) * (1 - r).log()).sum(1).mean()
    loss = denoising_loss(x, x_noisy, w, b, c)
    torch.testing.assert_close(loss, expected)
    # tied: the gradient is the encoder's plus the decoder's, as if the two were separate
    enc, dec = w.detach().clone().requires_grad_(), w.detach().T.clone().requires_grad_()
    r_untied = torch.sigmoid(torch.sigmoid(x_noisy @ enc.T + b) @ dec.T + c)
    untied = -(x * r_untied.log() + (1 - x) * (1 - r_untied).log()).sum(1).mean()
    (g,) = torch.autograd.grad(loss, w)
    g_enc, g_dec = torch.autograd.grad(untied, (enc, dec))
    torch.testing.assert_close(g, g_enc + g_dec.T)


def test_pretraining_lowers_every_layers_denoising_loss(full_run):
    _, pre, metrics, _ = full_run
    assert set(metrics["layers"]) == {"fc1", "fc2", "fc3"}
    for name, layer in metrics["layers"].items():
        assert layer["test_loss_after"] < 0.9 * layer["test_loss_before"], name
        assert len(layer["train_loss"]) == ARGS["epochs"]
        assert layer["train_loss"][-1] < layer["train_loss"][0], name
    assert metrics["pretrain"] == {
        "kind": "denoising_autoencoder",
        **{k: ARGS[k] for k in ("corruption", "epochs", "batch_size", "lr")},
    }
    assert (pre.mean, pre.std) == ([0.0], [1.0])  # the net reads pixels in [0, 1]


def test_each_layer_trains_on_the_clean_codes_of_the_frozen_layers_below(full_run):
    model, _, _, calls = full_run
    x = pixels(data()[0].images)
    with torch.no_grad():
        h1 = torch.sigmoid(model.fc1(x))
        codes = {784: x, 24: h1, 16: torch.sigmoid(model.fc2(h1))}  # a layer's input by width
    seen = {shape: 0 for shape in [(24, 784), (16, 24), (8, 16)]}
    for clean, corrupted, shape in calls:
        seen[tuple(shape)] += 1
        inputs = codes[shape[1]]
        # every row is a clean input of the layer: the final (frozen) layers below, no noise
        nearest = torch.cdist(clean, inputs, compute_mode="donot_use_mm_for_euclid_dist")
        assert nearest.min(1).values.max() < 1e-4, shape
        if shape[1] != 784:  # sigmoid codes are never 0: the zeros are the masking noise
            assert ((corrupted == 0).sum(1) == round(0.25 * shape[1])).all()
            kept = corrupted != 0
            assert torch.equal(corrupted[kept], clean[kept])
    steps = -(-len(x) // ARGS["batch_size"]) * ARGS["epochs"]
    assert seen == dict.fromkeys(seen, steps)  # layer by layer, every epoch


def test_lower_layers_stay_frozen_and_the_class_layer_untrained(tmp_path, full_run):
    model, _, metrics, _ = full_run
    partial = tmp_path / "partial.pt"
    stopped = pretrain_denoising_autoencoders(
        "mlp",
        {"hidden": HIDDEN},
        *data(),
        **ARGS,
        progress=False,
        resume_path=partial,
        stop_after_epoch=ARGS["epochs"],
    )
    assert stopped is None
    after_layer1 = torch.load(partial, weights_only=True)["model"]
    torch.manual_seed(ARGS["seed"])
    init = build("mlp", 10, 1, hidden=HIDDEN).state_dict()
    for k in ("fc2.weight", "fc2.bias", "fc3.weight", "fc4.weight"):
        assert torch.equal(after_layer1[k], init[k]), k  # layer 1 trains alone
    final = model.state_dict()
    for k in ("fc1.weight", "fc1.bias"):
        assert torch.equal(final[k], after_layer1[k]), k  # frozen while layers 2-3 train
    for k in ("fc4.weight", "fc4.bias"):
        assert torch.equal(final[k], init[k]), k  # the class layer never trains
    assert metrics["relative_weight_change"]["fc4.weight"] == 0
    assert min(v for k, v in metrics["relative_weight_change"].items() if k != "fc4.weight") > 0
    # resumed after layer 1: the same weights and losses as the uninterrupted run
    resumed, _, m_res = pretrain_denoising_autoencoders(
        "mlp", {"hidden": HIDDEN}, *data(), **ARGS, progress=False, resume_path=partial
    )
    for k, v in final.items():
        assert torch.equal(resumed.state_dict()[k], v), k
    assert m_res["history"] == metrics["history"]


def test_pretraining_refuses_what_it_cannot_pretrain():
    tr, te = data()
    with pytest.raises(ValueError, match="sigmoid"):
        pretrain_denoising_autoencoders(
            "mlp", {"hidden": [8], "activation": "relu"}, tr, te, **ARGS, progress=False
        )
    with pytest.raises(ValueError, match="'mlp' arch"):
        pretrain_denoising_autoencoders("all_cnn_c", {}, tr, te, **ARGS, progress=False)


def smoke_config() -> dict:
    return yaml.safe_load((ROOT / "config" / "smoke.yaml").read_text())


def test_the_model_job_writes_a_pretrained_mlp_checkpoint_and_its_metrics(tmp_path):
    cfg = resolve(smoke_config(), SCHEMA)
    spec = cfg["models"]["sdae_mnist"]
    ckpt, metrics = tmp_path / "sdae.pt", tmp_path / "sdae.json"
    make_model(
        "sdae_mnist",
        spec,
        datasets=cfg["datasets"],
        fashion_dir=None,
        cifar_dir=None,
        hub_dir=str(tmp_path),
        seed=0,
        device="cpu",
        threads=1,
        checkpoint=str(ckpt),
        metrics=str(metrics),
        partial=str(tmp_path / "partial.pt"),
    )
    model, pre, raw = load_checkpoint(ckpt)
    assert isinstance(model, MLP) and raw["arch"] == "mlp" and raw["meta"]["weights"] == "train"
    assert model(pre(load_images("mnist5k", "test").images[:3])).shape == (3, 10)
    m = json.loads(metrics.read_text())
    assert m["pretrain"]["kind"] == "denoising_autoencoder" and m["n_train"] == 4000
    assert set(m["layers"]) == {"fc1", "fc2", "fc3"} and "fc4" in m["output_layer"]
    assert all(v["test_loss_after"] < v["test_loss_before"] for v in m["layers"].values())
    assert "test_accuracy" not in m  # nothing was trained on labels
    assert not (tmp_path / "partial.pt").exists()


@pytest.mark.parametrize(
    "change, message",
    [
        (
            lambda c: c["models"]["sdae_mnist"]["pretrain"].update(corruptoin=0.5),
            r"^invalid config \(1 problem\(s\)\):\n  - unknown config key "
            r"'models\.sdae_mnist\.pretrain\.corruptoin'",
        ),
        (
            lambda c: c["models"]["sdae_mnist"]["pretrain"].update(kind="rbm"),
            r"'models\.sdae_mnist\.pretrain\.kind': 'rbm' is not one of",
        ),
        (
            lambda c: c["models"]["allcnn_fmnist"].update(
                pretrain={"kind": "denoising_autoencoder"}
            ),
            r"'models\.allcnn_fmnist\.arch': 'mlp' was expected",
        ),
        (  # the reviewer's case: it passed the schema and failed inside the model job
            lambda c: c["models"]["sdae_mnist"]["arch_args"].update(activation="relu"),
            r"'models\.sdae_mnist\.arch_args\.activation': 'sigmoid' was expected",
        ),
        (
            lambda c: c["experiments"]["actmax"]["erhan"].update(compare="vgg99"),
            r"'experiments\.actmax\.erhan\.compare': 'vgg99' must also be listed",
        ),
        (
            lambda c: c["experiments"]["actmax"]["erhan"].update(compare="sdae_mnist"),
            r"'experiments\.actmax\.erhan\.compare': a model other than erhan\.model",
        ),
        (
            lambda c: c["experiments"]["actmax"]["models"]["mlp_mnist"].pop("layers"),
            r"'experiments\.actmax\.models\.mlp_mnist\.layers': Erhan et al\.'s units",
        ),
    ],
)
def test_pretrain_and_erhan_settings_are_checked(change, message):
    cfg = smoke_config()
    change(cfg)
    with pytest.raises(ConfigError, match=message):
        resolve(cfg, SCHEMA)


def test_every_profile_runs_erhan_on_the_pretrained_net_beside_the_supervised_one():
    for profile in ("config", "smoke", "paper"):
        cfg = resolve(yaml.safe_load((ROOT / "config" / f"{profile}.yaml").read_text()), SCHEMA)
        erhan = cfg["experiments"]["actmax"]["erhan"]
        assert cfg["models"][erhan["model"]]["pretrain"]["kind"] == "denoising_autoencoder"
        assert "pretrain" not in cfg["models"][erhan["compare"]]
        same = ("arch", "arch_args", "dataset")
        assert [cfg["models"][erhan["model"]][k] for k in same] == [
            cfg["models"][erhan["compare"]][k] for k in same
        ], profile


def test_actmax_runs_erhan_on_both_models_and_decides_on_the_pretrained_one(tmp_path, full_run):
    pretrained, pre, _, _ = full_run
    torch.manual_seed(1)
    supervised = build("mlp", 10, 1, hidden=HIDDEN)
    models = {}
    for name, net, spec in (
        ("sdae", pretrained, {"pretrain": {"kind": "denoising_autoencoder"}}),
        ("mlp", supervised, {}),
    ):
        path = tmp_path / f"{name}.pt"
        save_checkpoint(
            path,
            net,
            arch="mlp",
            num_classes=10,
            in_channels=1,
            arch_args={"hidden": HIDDEN},
            preprocessing=pre,
            classes=list("0123456789"),
            meta={"weights": "train"},
        )
        spec = {"arch": "mlp", "weights": "train", "dataset": "mnist5k", **spec}
        models[name] = Model(name, str(path), spec, settings={"layers": ["fc1", "fc3"]})
    erhan = {"model": "sdae", "compare": "mlp", "units": 3, "starts": 2, "iterations": 10}
    settings = {
        "models": {m: copy.deepcopy(v.settings) for m, v in models.items()},
        "erhan": {**erhan, "step": 0.05},
        "yosinski": None,
    }
    run("actmax", settings, models, probe=Probe(datasets={}), device="cpu", results=tmp_path)
    result = json.loads((tmp_path / "metrics" / "actmax.json").read_text())
    info = result["erhan"]
    assert (info["model"], info["compare"]) == ("sdae", "mlp")
    assert set(info["models"]) == {"sdae", "mlp"}
    assert info["models"]["sdae"]["training"].startswith("unsupervised")
    assert info["models"]["mlp"]["training"] == "supervised on mnist5k"
    for m in info["models"].values():
        assert set(m["layers"]) == {"fc1", "fc3"} and m["rho"] > 0
        for layer in m["layers"].values():
            assert layer["activation_final_mean"] > layer["activation_start_mean"]
    claim = result["claims"]["random_starts_converge"]
    sdae = info["models"]["sdae"]["layers"]
    assert set(claim["parts"]) == set(sdae)  # a part per layer of the pretrained net
    for layer, v in sdae.items():
        assert len(v["within_by_unit"]) == len(v["between_by_unit"]) == len(v["units"])
        est = claim["parts"][layer]
        assert est["value"] == pytest.approx(v["within_unit_correlation"])
        assert est["null"] == pytest.approx(v["between_unit_correlation"])
        assert est["interval"][0] <= est["value"] <= est["interval"][1]
    assert (
        claim["ours"].startswith("sdae (unsupervised")
        and "Beside it, mlp (supervised" in (claim["ours"])
    )
    assert (tmp_path / "figures" / "actmax" / "erhan.png").stat().st_size > 5000
    claims = [ROOT / "config" / "claims" / "erhan2009.yaml"]
    rows = build_table(claims, {"actmax": tmp_path / "metrics" / "actmax.json"})
    assert [r["verdict"] in ("pass", "fail", "inconclusive") for r in rows] == [True]


def test_a_run_interrupted_inside_a_layer_resumes_to_the_same_weights(tmp_path):
    """Stopped one epoch into layer 2 (its decoder bias and optimiser state mid-way): the
    resumed run ends where the uninterrupted one does. The reference run is made here, under
    the same torch thread count (an earlier test's model job may have changed it, and the
    float sums of a matrix product depend on it)."""
    model, _, metrics = pretrain_denoising_autoencoders(
        "mlp", {"hidden": HIDDEN}, *data(), **ARGS, progress=False
    )
    partial = tmp_path / "partial.pt"
    stopped = pretrain_denoising_autoencoders(
        "mlp", {"hidden": HIDDEN}, *data(), **ARGS, progress=False, resume_path=partial,
        stop_after_epoch=ARGS["epochs"] + 1,
    )  # fmt: skip
    assert stopped is None
    resumed, _, m_res = pretrain_denoising_autoencoders(
        "mlp", {"hidden": HIDDEN}, *data(), **ARGS, progress=False, resume_path=partial
    )
    for k, v in model.state_dict().items():
        assert torch.equal(resumed.state_dict()[k], v), k
    assert m_res["history"] == metrics["history"]
