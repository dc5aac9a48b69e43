"""The model registry: build any architecture by name, with its metadata as data.

Every model, trained here or imported, is stored as one checkpoint format
(`save_checkpoint` / `load_checkpoint`): a state dict plus the architecture, its arguments and
the preprocessing, loaded with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import functools
import pickle
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path

import numpy as np
import torch
import yaml
from torch import nn

from cvinterp.models.all_cnn import AllCNNC
from cvinterp.models.mlp import MLP
from cvinterp.models.two_tower import TwoTowerAlexNet
from cvinterp.safepickle import load_array_pickle

ARCHS = (
    "two_tower_alexnet",
    "all_cnn_c",
    "mlp",
    "squeezenet1_1",
    "alexnet",
    "vgg16",
    "resnet18",
    "resnet152",
)


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, truncated or not one of ours."""


@dataclass
class Preprocessing:
    """How uint8 RGB pixels become the network's input."""

    value_range: float = 1.0
    mean: list[float] = field(default_factory=lambda: [0.5])
    std: list[float] = field(default_factory=lambda: [0.25])
    bgr: bool = False
    input_size: int | None = None
    #: short side an ImageNet image is resized to before its centre `input_size` crop (the
    #: evaluation transform of the weights); None: the input size itself
    resize: int | None = None

    def __call__(self, images: np.ndarray | torch.Tensor) -> torch.Tensor:
        """uint8 (N,H,W,C) RGB -> float (N,C,H,W), scaled, channel-ordered and normalised."""
        x = (
            torch.as_tensor(np.array(images, copy=True))
            if isinstance(images, np.ndarray)
            else images
        )
        return self._normalise(x.permute(0, 3, 1, 2).float() * (self.value_range / 255.0))

    def from_unit(self, x: torch.Tensor) -> torch.Tensor:
        """float (N,C,H,W) RGB in [0, 1] -> the network's input; differentiable, on x's device
        and in its dtype (what image-synthesis methods optimise through)."""
        return self._normalise(x * self.value_range)

    def _normalise(self, x: torch.Tensor) -> torch.Tensor:
        """RGB on the value range -> channel-ordered and normalised, on x's device and dtype."""
        if self.bgr:
            x = x.flip(1)
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        return (x - mean) / std

    def to_dict(self) -> dict:
        return dict(vars(self))


@functools.cache
def zoo() -> dict:
    """Model metadata (input size, value range, mean/std, BGR, named layers) per architecture."""
    return yaml.safe_load(files("cvinterp.models").joinpath("zoo.yaml").read_text())


def layer_path(arch: str, layer: str) -> str:
    """Module path of a paper-named layer, e.g. ('alexnet', 'conv5') -> 'features.10'."""
    layers = zoo()[arch]["layers"]
    if layer not in layers:
        raise KeyError(f"{arch} has no layer {layer!r}; named layers: {', '.join(layers)}")
    return layers[layer]


def get_layer(model: nn.Module, arch: str, layer: str) -> nn.Module:
    return model.get_submodule(layer_path(arch, layer))


def first_layer(model: nn.Module, arch: str) -> nn.Module:
    """The first named layer (conv1 of every architecture in the zoo)."""
    return model.get_submodule(next(iter(zoo()[arch]["layers"].values())))


#: torchvision's ImageNet nets: the weights' own transforms() (Resize(256), CenterCrop(224),
#: RGB in [0, 1] normalised), whatever the architecture
IMAGENET_RGB = Preprocessing(
    1.0, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225], False, 224, resize=256
)


def default_preprocessing(arch: str) -> Preprocessing:
    meta = zoo()[arch]
    if meta["mean"] is None:
        return Preprocessing(input_size=meta["input_size"])
    return Preprocessing(
        meta["value_range"],
        meta["mean"],
        meta["std"],
        meta["bgr"],
        meta["input_size"],
        resize=meta.get("resize"),
    )


def _no_inplace(model: nn.Module) -> nn.Module:
    for m in model.modules():
        if isinstance(m, nn.ReLU):
            m.inplace = False
    return model


def build(arch: str, num_classes: int = 1000, in_channels: int = 3, **arch_args) -> nn.Module:
    """A freshly initialised model (seed torch first for a reproducible init)."""
    if arch == "two_tower_alexnet":
        return TwoTowerAlexNet(in_channels, num_classes, **arch_args)
    if arch == "all_cnn_c":
        return AllCNNC(in_channels, num_classes, **arch_args)
    if arch == "mlp":
        return MLP(in_channels, num_classes, **arch_args)
    if arch in ("squeezenet1_1", "alexnet", "vgg16", "resnet18", "resnet152"):
        import torchvision

        if in_channels != 3:
            raise ValueError(f"{arch} takes 3 input channels, not {in_channels}")
        net = getattr(torchvision.models, arch)(weights=None, num_classes=num_classes, **arch_args)
        return _no_inplace(net)
    raise ValueError(f"unknown architecture {arch!r}; known: {', '.join(ARCHS)}")


def save_checkpoint(
    path: str | Path,
    model: nn.Module,
    *,
    arch: str,
    num_classes: int,
    in_channels: int,
    arch_args: dict,
    preprocessing: Preprocessing,
    classes: list[str],
    meta: dict | None = None,
    snapshots: dict[int, dict] | None = None,
) -> None:
    """Write a checkpoint atomically (a partial file never has the final name); `snapshots`
    {optimizer step: state dict} are the weights during training (`snapshot_models`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": "cvinterp-checkpoint-1",
        "arch": arch,
        "num_classes": num_classes,
        "in_channels": in_channels,
        "arch_args": dict(arch_args),
        "preprocessing": preprocessing.to_dict(),
        "classes": list(classes),
        "meta": dict(meta or {}),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    if snapshots:
        payload["snapshots"] = {str(step): state for step, state in sorted(snapshots.items())}
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)


def read_checkpoint(
    path: str | Path, fmt: str = "cvinterp-checkpoint-1", kind: str = "cvinterp checkpoint"
) -> dict:
    """Load a checkpoint safely (weights_only) and check it is one of ours (format `fmt`)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist: run the workflow to create it")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated zip, foreign pickle, ...
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]  # torch's is long
        raise CheckpointError(
            f"checkpoint {path} is corrupt, truncated or not a weights-only file ({reason}); "
            "delete it and run the workflow again to recreate it"
        ) from err
    if not isinstance(ckpt, dict) or ckpt.get("format") != fmt:
        raise CheckpointError(f"{path} is not a {kind} (no '{fmt}' format marker)")
    return ckpt


def build_from(ckpt: dict) -> nn.Module:
    """A freshly initialised model of a checkpoint's architecture (its weights not loaded)."""
    return build(ckpt["arch"], ckpt["num_classes"], ckpt["in_channels"], **ckpt["arch_args"])


def load_checkpoint(path: str | Path, device: torch.device | str = "cpu"):
    """(model in eval mode on `device`, preprocessing, checkpoint dict)."""
    ckpt = read_checkpoint(path)
    model = build_from(ckpt)
    model.load_state_dict(ckpt["state_dict"])
    return model.to(device).eval(), Preprocessing(**ckpt["preprocessing"]), ckpt


def snapshot_models(
    ckpt: dict, device: torch.device | str = "cpu"
) -> Iterator[tuple[int, nn.Module]]:
    """(optimizer step, the model with the weights it had then, in eval mode) for each snapshot
    a checkpoint's training kept, in step order, built one at a time (none if it kept none)."""
    for step, state in sorted(ckpt.get("snapshots", {}).items(), key=lambda kv: int(kv[0])):
        model = build_from(ckpt)
        model.load_state_dict(state)
        yield int(step), model.to(device).eval()


# --- imported ImageNet weights -------------------------------------------------------------


def read_array_pickle(path: str | Path) -> dict:
    try:
        return load_array_pickle(path)
    except (pickle.UnpicklingError, EOFError) as err:
        raise CheckpointError(f"{path}: not a plain pickle of arrays ({err})") from err


def squeezenet_from_ndf(pickle_path: str | Path) -> nn.Module:
    """torchvision's squeezenet1_1 carrying the Caffe ImageNet weights shipped in ndf."""
    weights = read_array_pickle(pickle_path)
    model = build("squeezenet1_1", 1000)
    fire_names = {"squeeze1x1": "squeeze", "expand1x1": "expand1x1", "expand3x3": "expand3x3"}
    state = {}
    for name, (kernel, bias) in weights.items():
        if name == "conv1":
            prefix = layer_path("squeezenet1_1", "conv1")
        elif name == "conv10":
            prefix = layer_path("squeezenet1_1", "conv10")
        else:
            fire, part = name.split("/")
            prefix = f"{layer_path('squeezenet1_1', fire)}.{fire_names[part]}"
        state[f"{prefix}.weight"] = torch.from_numpy(
            np.ascontiguousarray(kernel.transpose(3, 2, 0, 1))
        )
        state[f"{prefix}.bias"] = torch.from_numpy(np.asarray(bias))
    missing = set(model.state_dict()) - set(state)
    if missing:
        raise CheckpointError(f"{pickle_path} lacks weights for {sorted(missing)}")
    model.load_state_dict(state)
    return model.eval()


def load_torchvision_state_dict(path: str | Path, arch: str) -> nn.Module:
    """A torchvision-format state dict file (as torchvision publishes it) into our `arch`."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise CheckpointError(
            f"{path} is corrupt, truncated or not a weights-only state dict "
            f"({err}); delete it and run the workflow again"
        ) from err
    model = build(arch, 1000)
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise CheckpointError(f"{path} does not hold {arch} weights: {err}") from err
    return model.eval()


def torchvision_weights_name(arch: str) -> str:
    """The file name of an architecture's torchvision weights: `<arch>-<sha256[:8]>.pth`."""
    import torchvision

    return Path(torchvision.models.get_model_weights(arch).IMAGENET1K_V1.url).name


def fetch_torchvision_weights(arch: str, hub_dir: str | Path) -> Path:
    """The torchvision ImageNet weights file under `hub_dir/checkpoints/`, downloaded if missing,
    checked against the hash prefix in its name."""
    import torchvision

    weights = torchvision.models.get_model_weights(arch).IMAGENET1K_V1
    target = Path(hub_dir) / "checkpoints" / Path(weights.url).name  # torchvision_weights_name
    prefix = target.stem.rsplit("-", 1)[-1]
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            torch.hub.download_url_to_file(weights.url, str(target), hash_prefix=prefix)
        except Exception as err:
            raise CheckpointError(
                f"cannot download {weights.url} ({type(err).__name__}: {err}). Offline? Fetch "
                f"it on a machine with internet and put it at {target}"
            ) from err
    from cvinterp.data.fetch import file_hash

    digest = file_hash(target)
    if not digest.startswith(prefix):
        raise CheckpointError(
            f"{target} is corrupt (sha256 {digest[:8]}..., expected {prefix}...):"
            " delete it and rerun to download it again"
        )
    return target


def torchvision_pretrained(arch: str, hub_dir: str | Path) -> nn.Module:
    """ImageNet weights from torchvision (fetched by the workflow's local rule
    `get_torchvision_weights`, or here when missing), checked, loaded into the architecture."""
    return load_torchvision_state_dict(fetch_torchvision_weights(arch, hub_dir), arch)
