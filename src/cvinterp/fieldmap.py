"""Receptive-field geometry ("fieldmaps") and the upsampling of Network Dissection.

Bau, Zhou, Khosla, Oliva & Torralba (2017), "Network Dissection: Quantifying Interpretability
of Deep Visual Representations" (CVPR), upsample each unit's activation map to the resolution
of the concept masks by placing every activation at the centre of its receptive field and
interpolating piecewise-linearly between those centres, holding the outer values constant
beyond the outer centres. The centres come from the net's conv/pool geometry. This module
derives that geometry for a PyTorch model by following one forward pass, with the definitions
of the authors' code (CSAILVision/NetDissect, `src/upsample.py`):

- a fieldmap is ((offset_y, offset_x), (size_y, size_x), (step_y, step_x)): output pixel
  (i, j) sees the input window starting at (i * step_y + offset_y, j * step_x + offset_x) of
  the given size;
- a conv or pool layer with kernel k (dilated: d * (k - 1) + 1), stride s and padding p is
  ((-p_y, -p_x), (k_y, k_x), (s_y, s_x)); layers compose as in `compose`;
- where several inputs meet (concatenation, addition) the incoming fieldmap with the largest
  size (along y) is kept; every other op passes the geometry through.

`centres` gives the sample positions in mask pixels (the authors' `centered_arange`) and
`linear_weights` the interpolation matrices, so that `Wy @ A @ Wx.T` equals the authors'
`RectBivariateSpline(ay, ax, A, kx=1, ky=1)` evaluated at the integer mask pixels.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils.weak import WeakIdKeyDictionary

from cvinterp.instrument import Instrument, model_device

Pair = tuple[int, int]
Fieldmap = tuple[Pair, Pair, Pair]

IDENTITY: Fieldmap = ((0, 0), (1, 1), (1, 1))


def compose(lower: Fieldmap, upper: Fieldmap) -> Fieldmap:
    """The fieldmap of `upper` applied on top of `lower` (the authors' `compose_fieldmap`)."""
    (o1, s1, t1), (o2, s2, t2) = lower, upper
    size = tuple((s2[i] - 1) * t1[i] + s1[i] for i in range(2))
    offset = tuple(o2[i] * t1[i] + o1[i] for i in range(2))
    step = tuple(t2[i] * t1[i] for i in range(2))
    return offset, size, step


def _window(kernel: Pair, stride: Pair, padding: Pair, dilation: Pair = (1, 1)) -> Fieldmap:
    """The fieldmap of one conv or pool layer."""
    size = tuple(dilation[i] * (kernel[i] - 1) + 1 for i in range(2))
    return (-padding[0], -padding[1]), size, tuple(stride)


@dataclasses.dataclass(frozen=True)
class _Lost:
    """The geometry was lost at an op that changed the spatial size in an unknown way."""

    op: str
    before: tuple[int, ...]
    after: tuple[int, ...]


def _pair(v) -> Pair:
    if isinstance(v, torch.Tensor):
        v = v.tolist()
    if isinstance(v, (list, tuple)):
        if len(v) == 1:
            return int(v[0]), int(v[0])
        return int(v[0]), int(v[1])
    return int(v), int(v)


def _arg(args, kwargs, i: int, name: str, default=None):
    return args[i] if len(args) > i else kwargs.get(name, default)


def _conv(args, kwargs) -> Fieldmap:
    """torch.conv2d / F.conv2d(input, weight, bias, stride, padding, dilation, groups)."""
    kernel = _pair(tuple(_arg(args, kwargs, 1, "weight").shape[-2:]))
    stride = _pair(_arg(args, kwargs, 3, "stride", 1))
    dilation = _pair(_arg(args, kwargs, 5, "dilation", 1))
    padding = _arg(args, kwargs, 4, "padding", 0)
    if padding == "valid":
        padding = (0, 0)
    elif padding == "same":  # PyTorch puts the odd one of d * (k - 1) pixels on the right
        padding = tuple(dilation[i] * (kernel[i] - 1) // 2 for i in range(2))
    return _window(kernel, stride, _pair(padding), dilation)


def _pool(kernel_at: int, dilation_at: int | None) -> Callable[[tuple, dict], Fieldmap]:
    """A pooling function with kernel_size, stride, padding (and dilation) from `kernel_at`."""

    def parse(args, kwargs) -> Fieldmap:
        kernel = _pair(_arg(args, kwargs, kernel_at, "kernel_size"))
        stride = _arg(args, kwargs, kernel_at + 1, "stride")
        if stride is None or (isinstance(stride, (list, tuple)) and not stride):
            stride = kernel  # torch.max_pool2d's default is an empty list
        else:
            stride = _pair(stride)
        padding = _pair(_arg(args, kwargs, kernel_at + 2, "padding", 0))
        dilation = (1, 1)
        if dilation_at is not None:
            dilation = _pair(_arg(args, kwargs, dilation_at, "dilation", 1))
        return _window(kernel, stride, padding, dilation)

    return parse


def _lp_pool(args, kwargs) -> Fieldmap:
    """F.lp_pool2d(input, norm_type, kernel_size, stride=None, ceil_mode=False): no padding."""
    kernel = _pair(_arg(args, kwargs, 2, "kernel_size"))
    stride = _arg(args, kwargs, 3, "stride")
    return _window(kernel, kernel if stride is None else _pair(stride), (0, 0))


def _pad(args, kwargs) -> Fieldmap:
    """F.pad(input, (left, right, top, bottom, ...)): the origin moves by the top/left pad."""
    pad = [int(p) for p in _arg(args, kwargs, 1, "pad")]
    top = pad[2] if len(pad) >= 4 else 0
    return (-top, -pad[0]), (1, 1), (1, 1)


def _present(owner, *names: str) -> list:
    return [getattr(owner, n) for n in names if hasattr(owner, n)]


# Each function as it reaches `__torch_function__` (checked with torch 2.14): nn.Conv2d calls
# torch.conv2d (F.conv2d is the same function; a non-zero padding_mode calls F.pad first);
# nn.MaxPool2d calls F.max_pool2d or F.max_pool2d_with_indices; nn.AvgPool2d and F.avg_pool2d
# are torch._C._nn.avg_pool2d; nn.ZeroPad2d, nn.ReflectionPad2d etc. call F.pad.
_LAYERS: dict[Callable, Callable[[tuple, dict], Fieldmap]] = {
    **{f: _conv for f in (torch.conv2d, F.conv2d)},
    **{
        f: _pool(1, 4)
        for f in (
            F.max_pool2d,
            F.max_pool2d_with_indices,
            torch.max_pool2d,
            *_present(torch._C._nn, "max_pool2d_with_indices"),
        )
    },
    **{f: _pool(1, None) for f in (F.avg_pool2d, *_present(torch._C._nn, "avg_pool2d"))},
    F.lp_pool2d: _lp_pool,
    **{f: _pad for f in (F.pad, *_present(torch, "constant_pad_nd"))},
}


def _tensors(value) -> Iterator[torch.Tensor]:
    """The tensors in an argument or result, also inside lists, tuples and dicts."""
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _tensors(v)
    elif isinstance(value, dict):
        for v in value.values():
            yield from _tensors(v)


def _op_name(func) -> str:
    name = getattr(func, "__qualname__", None) or getattr(func, "__name__", str(func))
    module = getattr(func, "__module__", None)
    if name.startswith("TensorBase."):
        return "Tensor." + name.removeprefix("TensorBase.")
    return f"{module}.{name}" if module else name


class _Propagate(TorchFunctionMode):
    """Carries a fieldmap (or the op that lost it) from tensor to tensor during a forward."""

    def __init__(self):
        super().__init__()
        self.maps = WeakIdKeyDictionary()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func in _LAYERS:
            self._layer(func, args, kwargs, out)
        else:
            self._through(func, args, kwargs, out)
        return out

    def _layer(self, func, args, kwargs, out) -> None:
        x = _arg(args, kwargs, 0, "input")
        entry = self.maps.get(x) if isinstance(x, torch.Tensor) else None
        if entry is None:
            return
        if not isinstance(entry, _Lost):
            entry = compose(entry, _LAYERS[func](args, kwargs))
        for t in _tensors(out):
            if t.dim() >= 3:
                self.maps[t] = entry

    def _through(self, func, args, kwargs, out) -> None:
        """Any other op: the largest incoming fieldmap, unless the op moves pixels around."""
        outputs = [t for t in _tensors(out) if t.dim() >= 3]
        if not outputs:
            return
        inputs = [
            (t, self.maps[t]) for t in _tensors((args, kwargs)) if t.dim() >= 3 and t in self.maps
        ]
        if not inputs:
            return
        for o in outputs:
            entry = self._carried(func, inputs, tuple(o.shape[-2:]))
            if entry is not None:
                self.maps[o] = entry

    @staticmethod
    def _carried(func, inputs, spatial: tuple[int, ...]) -> Fieldmap | _Lost | None:
        best = None
        for t, entry in inputs:
            here = tuple(t.shape[-2:])
            if here == (1, 1) and spatial != (1, 1):
                continue  # a broadcast (a squeeze-and-excitation gate): no position to carry
            if isinstance(entry, _Lost):
                return entry
            if here != spatial:
                return _Lost(_op_name(func), here, spatial)
            if best is None or entry[1][0] > best[1][0]:
                best = entry
        return best


def _dtype(model: nn.Module) -> torch.dtype:
    for t in (*model.parameters(), *model.buffers()):
        if t.is_floating_point():
            return t.dtype
    return torch.get_default_dtype()


def fieldmap(model: nn.Module, path: str, input_shape: tuple[int, int, int]) -> Fieldmap:
    """The fieldmap from the input image to the output of module `path`, followed through one
    forward pass of zeros of shape (1, *input_shape) in eval mode (the model's train/eval flags
    are restored afterwards).

    Raises ValueError when the geometry cannot be followed to that output: an op of unknown
    geometry changed the spatial size on the way (interpolation, adaptive pooling to another
    size, a transposed convolution, an unfold or a reshape), or the output does not derive
    position by position from the image.
    """
    device = model_device(model) or torch.device("cpu")
    x = torch.zeros((1, *input_shape), device=device, dtype=_dtype(model))
    training = {m: m.training for m in model.modules()}
    model.eval()
    try:
        with (
            torch.no_grad(),
            Instrument(model, [path], detach=True, stop_early=True) as ins,
            _Propagate() as mode,
        ):
            mode.maps[x] = IDENTITY
            ins.forward(x)
            out = ins[path]
            entry = mode.maps.get(out)
    finally:
        for m, flag in training.items():
            m.training = flag
    if isinstance(entry, _Lost):
        raise ValueError(
            f"cannot derive the fieldmap of {path!r}: {entry.op} changes the spatial size "
            f"({'x'.join(map(str, entry.before))} -> {'x'.join(map(str, entry.after))}) on "
            "the way, and the fieldmap upsampling cannot follow it; use `upsample: bilinear` "
            "instead"
        )
    if entry is None:
        raise ValueError(
            f"cannot derive the fieldmap of {path!r}: its output (shape {tuple(out.shape)}) "
            "is not a spatial map derived position by position from the input image; use "
            "`upsample: bilinear` instead"
        )
    return entry


def centres(fm: Fieldmap, shape: tuple[int, int], reduction: int = 1) -> tuple[np.ndarray, ...]:
    """The positions (y, x), in pixels of the image downscaled by `reduction`, of the
    receptive-field centres of an activation map of `shape`: the authors' `centered_arange`.

    Along an axis with offset o, size s, step t and a activations the positions are
    (s // 2 + o) // r + i * (t // r), i < a. (The authors take the first a points of
    `arange((s // 2 + o) // r, (s // 2 + o + a * t) // r, t // r)`; that range never has fewer
    than a points, since (c + a t) // r - c // r >= (a t) // r >= a (t // r).) A step smaller
    than the reduction (t // r == 0, where their arange fails) gives the exact float positions
    (s // 2 + o + i * t) / r instead.
    """
    if reduction < 1:
        raise ValueError(f"reduction {reduction}: must be at least 1")
    out = []
    for o, s, t, a in zip(*fm, shape, strict=True):
        centre = s // 2 + o
        i = np.arange(a, dtype=np.float64)
        if t // reduction == 0:
            out.append((centre + i * t) / reduction)
        else:
            out.append(centre // reduction + i * (t // reduction))
    return tuple(out)


def mask_centres(
    fm: Fieldmap, shape: tuple[int, int], input_size: int, mask_size: tuple[int, int]
) -> tuple[np.ndarray, ...]:
    """The centres (y, x) in the pixels of masks of `mask_size` (sh, sw) over an input of
    `input_size` px: the authors' `centres` with reduction r = round(input_size / sw) where the
    masks are the input downscaled by r, up to their one pixel of rounding (|input_size - r sw|
    < r: 227 px on 113-px masks, 224 on 112); otherwise (a net fed the probe at another scale
    than its masks', e.g. 64 px on 112-px masks, where their r would be 1 and the centres would
    miss most of the mask) the exact float positions (s // 2 + o + i t) * mask / input."""
    sw = mask_size[1]
    r = math.floor(input_size / sw + 0.5)  # Python 2's round, as the authors'
    if r >= 1 and abs(input_size - r * sw) < r:
        return centres(fm, shape, r)
    return tuple(
        (s // 2 + o + np.arange(a, dtype=np.float64) * t) * (m / input_size)
        for o, s, t, a, m in zip(*fm, shape, mask_size, strict=True)
    )


def linear_weights(positions: np.ndarray, size: int) -> np.ndarray:
    """(size, n) weights with which output pixel p (0 .. size - 1) mixes the n samples at the
    increasing `positions`: linear between neighbouring samples, and all on the outer sample
    beyond the outer positions. `Wy @ A @ Wx.T` is the authors' `RectBivariateSpline(ay, ax, A,
    kx=1, ky=1)(arange(Sy), arange(Sx))`."""
    pos = np.asarray(positions, dtype=np.float64)
    n = len(pos)
    if pos.ndim != 1 or n == 0:
        raise ValueError(f"positions must be a non-empty vector, not shape {pos.shape}")
    if np.any(np.diff(pos) <= 0):
        raise ValueError("positions must be strictly increasing")
    weights = np.zeros((size, n), dtype=np.float64)
    if n == 1:
        weights[:, 0] = 1.0
        return weights
    p = np.clip(np.arange(size, dtype=np.float64), pos[0], pos[-1])
    j = np.clip(np.searchsorted(pos, p, side="right") - 1, 0, n - 2)
    w = (p - pos[j]) / (pos[j + 1] - pos[j])
    rows = np.arange(size)
    weights[rows, j] = 1.0 - w
    weights[rows, j + 1] += w
    return weights
