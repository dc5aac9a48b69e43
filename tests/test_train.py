"""Training is deterministic on the CPU and resumes after an interruption to the same result."""

import pytest
import torch

from cvinterp.data import load_images
from cvinterp.runtime import seed_everything
from cvinterp.train import train_classifier

ARGS = dict(
    epochs=2,
    batch_size=32,
    lr=0.02,
    momentum=0.9,
    weight_decay=5e-4,
    lr_milestones=[1],
    seed=0,
    device=torch.device("cpu"),
    progress=False,
)
ARCH = (
    "two_tower_alexnet",
    {"widths": [16, 32, 32, 32, 32], "conv1_kernel": 5, "fc": 32, "conv1_init_std": 0.1},
)


def data():
    return load_images("mnist5k", "train")[::2], load_images("mnist5k", "test")[::4]


@pytest.fixture(scope="module")
def full_run():
    seed_everything(0, 1)
    return train_classifier(*ARCH, *data(), **ARGS)


def test_same_seed_same_weights_and_metrics(full_run):
    tr, te = data()
    a, _, ma, _ = full_run
    b, _, mb, _ = train_classifier(*ARCH, tr, te, **ARGS)
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(va, vb), k
    assert ma["history"] == mb["history"]
    assert ma["test_accuracy"] > 0.3  # it really learns the digits (chance: 0.1)


def test_interrupted_run_resumes_to_the_same_weights(tmp_path, full_run):
    tr, te = data()
    full, _, m_full, _ = full_run
    partial = tmp_path / "partial.pt"
    assert train_classifier(*ARCH, tr, te, **ARGS, resume_path=partial, stop_after_epoch=1) is None
    assert torch.load(partial, weights_only=True)["epoch"] == 1
    resumed, _, m_res, _ = train_classifier(*ARCH, tr, te, **ARGS, resume_path=partial)
    for (k, va), vb in zip(full.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(va, vb), k
    assert m_full["test_accuracy"] == m_res["test_accuracy"]
    assert [h["epoch"] for h in m_res["history"]] == [1, 2]


def test_partial_state_of_other_settings_is_ignored(tmp_path, capsys):
    seed_everything(0, 1)
    tr, te = data()
    partial = tmp_path / "partial.pt"
    train_classifier(*ARCH, tr, te, **ARGS, resume_path=partial, stop_after_epoch=1)
    other = dict(ARGS, lr=0.01)
    _, _, m, _ = train_classifier(*ARCH, tr, te, **other, resume_path=partial)
    assert "belongs to other training settings" in capsys.readouterr().out
    assert [h["epoch"] for h in m["history"]] == [1, 2]  # started from scratch


def test_truncated_partial_state_is_ignored_not_fatal(tmp_path, full_run, capsys):
    tr, te = data()
    partial = tmp_path / "partial.pt"
    train_classifier(*ARCH, tr, te, **ARGS, resume_path=partial, stop_after_epoch=1)
    partial.write_bytes(partial.read_bytes()[:64])  # killed while writing, or a damaged disk
    resumed, _, m, _ = train_classifier(*ARCH, tr, te, **ARGS, resume_path=partial)
    assert "unreadable" in capsys.readouterr().out
    for (k, va), vb in zip(
        full_run[0].state_dict().items(), resumed.state_dict().values(), strict=True
    ):
        assert torch.equal(va, vb), k
    assert [h["epoch"] for h in m["history"]] == [1, 2]


def test_snapshots_are_the_weights_at_their_steps_and_survive_a_resume(tmp_path, full_run):
    """Step 0 is the initialisation, the last step the final weights; an interrupted run keeps
    the snapshots it took before the interruption, and ends with the same ones."""
    tr, te = data()
    steps = [0, 5, 100, 10**6]  # 158 steps in all: the last one is beyond the run
    last = 2 * -(-len(tr) // ARGS["batch_size"])
    model, _, metrics, kept = train_classifier(*ARCH, tr, te, **ARGS, snapshots=[*steps, last])
    assert sorted(kept) == metrics["snapshot_steps"] == [0, 5, 100, last]
    assert metrics["steps"] == last
    for k, v in model.state_dict().items():
        assert torch.equal(kept[last][k], v), k
        assert torch.equal(full_run[0].state_dict()[k], v), k  # snapshots change no weight
    assert any(not torch.equal(kept[0][k], kept[5][k]) for k in kept[0])  # it trains
    partial = tmp_path / "partial.pt"
    train_classifier(
        *ARCH, tr, te, **ARGS, snapshots=[*steps, last], resume_path=partial, stop_after_epoch=1
    )
    _, _, _, resumed = train_classifier(
        *ARCH, tr, te, **ARGS, snapshots=[*steps, last], resume_path=partial
    )
    assert sorted(resumed) == sorted(kept)
    for step, state in kept.items():
        for k, v in state.items():
            assert torch.equal(resumed[step][k], v), (step, k)
