"""Occlusion sensitivity (Zeiler & Fergus 2014, Fig. 7), with incremental inference
(Nakandala, Kumar & Papakonstantinou 2019).

A grey square is slid over the image; for every position the occluded image is classified and
three maps are kept: p(true class), the most likely label, and the total activation of the
feature map that responds most strongly to the unoccluded image. The grey is the preprocessing's
mean pixel, i.e. 0 after normalisation.

Most of an occluded image is the clean image, and so is most of every feature map below the
layer where the square's projective field covers the map. `occlusion` therefore runs the clean
image once, keeping every activation, and for each batch of square positions recomputes only the
changed region of each layer (Nakandala et al.'s incremental inference, exact):

- the model is traced (torch.fx); each activation of a batch is either a *patch* (the clean map
  plus, per position, a fixed-size box of new values) or a full batch;
- a convolution, max-pool or average pool maps a patch to a patch: the output box is every
  output position whose window meets the input box (from kernel, stride, padding, dilation),
  shifted inward where it would cross the border so that one box size serves the batch; its
  input is gathered from the clean map (padded as the layer pads) with the input box pasted in;
- pointwise layers (ReLU, dropout and batch norm in eval mode, local response norm, ...) act on
  the box alone; a sum or a concatenation along channels of patches (SqueezeNet's fire modules,
  residual blocks) works on the boxes' union;
- anything else (a flatten, a linear layer, an adaptive pool that changes the size), or a box
  covering at least `full_above` of its map, turns the patch into the full batch (the clean
  map repeated, the box pasted) and the rest runs as the model runs.

The result equals one full forward pass per position up to the order of floating-point sums
(tests: float64 to 1e-10, float32 to 1e-5 relative); a model torch.fx cannot trace runs full
passes, and `OcclusionMaps.inference` says which it was.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn

from cvinterp.instrument import Instrument
from cvinterp.methods.ablation import LeafTracer


@dataclass
class OcclusionMaps:
    """The maps of one image, one value per position of the grey square (ny, nx)."""

    p_true: np.ndarray  # (ny, nx) p(target class) with the square at each position
    label: np.ndarray  # (ny, nx) most likely class
    feature: np.ndarray | None  # (ny, nx) total activation of the strongest feature map (layer)
    feature_unit: int | None  # which feature map (None without a layer)
    p_true_clean: float  # p(target class) of the unoccluded image
    boxes: np.ndarray  # (ny*nx, 4) y0, y1, x0, x1 of the square
    inference: str = "full passes"  # how the occluded images ran (incremental up to where)


def positions(
    size: tuple[int, int], window: int, stride: int
) -> tuple[np.ndarray, tuple[int, int]]:
    """Top-left corners (P, 2) covering the image, the last row/column flush with the border,
    and the grid's shape."""
    if window > min(size):
        raise ValueError(f"occlusion window {window} is larger than the image {size}")
    if stride < 1:
        raise ValueError(f"occlusion stride must be at least 1, not {stride}")
    if stride > window:
        raise ValueError(
            f"occlusion stride {stride} is larger than the window {window}: the pixels between "
            f"two positions would never be occluded; use a stride of at most {window}"
        )
    out = []
    for n in size:
        starts = list(range(0, n - window + 1, stride))
        if starts[-1] != n - window:
            starts.append(n - window)
        out.append(starts)
    ys, xs = np.meshgrid(*out, indexing="ij")
    return np.stack([ys.ravel(), xs.ravel()], 1), (len(out[0]), len(out[1]))


@torch.no_grad()
def occlusion(
    model: nn.Module,
    x: torch.Tensor,
    target: int,
    *,
    window: int,
    stride: int,
    layer: str | None = None,
    batch_size: int = 128,
    incremental: bool = True,
    full_above: float = 0.75,
) -> OcclusionMaps:
    """Occlusion maps of one preprocessed image x (C, H, W) for class `target`.

    A `window`-pixel square set to 0 (the mean pixel after normalisation) slides by `stride`
    (at most the window: every pixel is occluded at least once), `batch_size` positions at a
    time. With `layer` (a module path) the feature-map fields follow the feature map of that
    layer most active on the clean image; without, they are None. `incremental` recomputes
    only what the square changes (see the module's docstring; False: one full forward pass per
    position), down to where a box covers `full_above` of its map. Puts the model in eval mode.
    """
    if x.dim() != 3:
        raise ValueError(f"x must be one image (C, H, W), not of shape {tuple(x.shape)}")
    model.eval()
    target = int(target)
    corners, grid = positions(tuple(x.shape[1:]), window, stride)
    boxes = np.stack(
        [corners[:, 0], corners[:, 0] + window, corners[:, 1], corners[:, 1] + window], 1
    )
    engine, why = None, "full passes"
    if incremental:
        try:
            engine = Incremental(model, x, layer, full_above)
        except IncrementalError as err:
            why = f"full passes ({err})"
    if engine is not None:
        p_clean, unit = engine.p_clean(target), engine.unit
        batches = [
            engine.run(corners[i : i + batch_size], window)
            for i in range(0, len(corners), batch_size)
        ]
        why = engine.describe()
    else:
        p_clean, unit, batches = _full_passes(model, x, corners, window, layer, batch_size, target)
    prob = torch.cat([b[0] for b in batches]).softmax(1)
    feature = torch.cat([b[1] for b in batches]).view(grid).cpu().numpy() if layer else None
    return OcclusionMaps(
        prob[:, target].view(grid).cpu().numpy(),
        prob.argmax(1).view(grid).cpu().numpy(),
        feature,
        unit,
        p_clean,
        boxes,
        why,
    )


def _full_passes(model, x, corners, window, layer, batch_size, target):
    """(p(target) of the clean image, the layer's strongest unit, [(logits, unit totals)] per
    batch): one forward pass per position."""
    with Instrument(model, [layer] if layer else [], detach=True) as ins:
        p_clean = model(x[None].contiguous(memory_format=torch.channels_last))
        p_clean = p_clean.softmax(1)[0, target].item()
        unit = _strongest(ins[layer][0]) if layer else None
        out = []
        for start in range(0, len(corners), batch_size):
            chunk = corners[start : start + batch_size]
            xb = x[None].repeat(len(chunk), 1, 1, 1)
            for i, (y0, x0) in enumerate(chunk):
                xb[i, :, y0 : y0 + window, x0 : x0 + window] = 0.0
            logits = model(xb.contiguous(memory_format=torch.channels_last))
            out.append((logits, _unit_total(ins[layer], unit) if layer else None))
    return p_clean, unit, out


def _strongest(act: torch.Tensor) -> int:
    """The feature map (or unit) of one image's activation with the largest total."""
    return int(act.flatten(1).sum(1).argmax()) if act.dim() > 1 else int(act.argmax())


def _unit_total(act: torch.Tensor, unit: int) -> torch.Tensor:
    a = act[:, unit]
    return a.flatten(1).sum(1) if a.dim() > 1 else a


# --- incremental inference (Nakandala et al. 2019) ---------------------------------------------


class IncrementalError(RuntimeError):
    """The model cannot run incrementally (torch.fx cannot trace it)."""


@dataclass
class _Patch:
    """A batch of P activations equal to `clean` (1, C, H, W) outside one box per position:
    rows y[i] .. y[i] + h, columns x[i] .. x[i] + w (y, x: (P,) int64), whose values are
    v (P, C, h, w)."""

    clean: torch.Tensor
    y: torch.Tensor
    x: torch.Tensor
    v: torch.Tensor


def _arange(n: int, like: torch.Tensor) -> torch.Tensor:
    return torch.arange(n, device=like.device)


def _window(
    source: torch.Tensor, pad: tuple[int, int], y, x, size: tuple[int, int], patch: _Patch
) -> torch.Tensor:
    """(P, C, h, w), channels-last: from `source`, the patch's clean map padded by pad =
    (top, left) rows and columns (and whatever it needs at the bottom and right), the windows
    whose top-left corners are (y, x) in the unpadded map's coordinates, with the patch's boxes
    pasted in where they fall inside."""
    h, w = size
    # every h x w window of the map as a view (rows, columns, h, w, C); one copy picks P of them
    windows = source[0].permute(1, 2, 0).unfold(0, h, 1).unfold(1, w, 1).permute(0, 1, 3, 4, 2)
    base = windows[y + pad[0], x + pad[1]].contiguous()  # (P, h, w, C)
    n, c = base.shape[0], base.shape[3]
    ph, pw = patch.v.shape[-2:]
    rows = (patch.y - y)[:, None] + _arange(ph, y)
    cols = (patch.x - x)[:, None] + _arange(pw, x)
    at = (rows[:, :, None] * w + cols[:, None, :]).view(n, -1, 1)  # where each box value goes
    values = patch.v.permute(0, 2, 3, 1).reshape(n, ph * pw, c)
    inside = ((rows >= 0) & (rows < h))[:, :, None] & ((cols >= 0) & (cols < w))[:, None, :]
    flat = base.view(n, h * w, c)
    if bool(inside.all()):
        flat.scatter_(1, at.expand(n, ph * pw, c), values)
    else:  # a box reaching past its window (values no output in the window reads): an extra,
        # discarded slot takes them
        at = torch.where(inside.view(n, -1, 1), at, h * w)
        flat = torch.cat([flat, flat.new_zeros(n, 1, c)], 1)
        flat.scatter_(1, at.expand(n, ph * pw, c), values)
        flat = flat[:, : h * w]
    return flat.reshape(n, h, w, c).permute(0, 3, 1, 2)


def _full(patch: _Patch) -> torch.Tensor:
    """The patch as the full batch (P, C, H, W): the clean map repeated, the boxes pasted."""
    zero = torch.zeros_like(patch.y)
    return _window(patch.clean, (0, 0), zero, zero, patch.clean.shape[-2:], patch)


@dataclass
class _Spatial:
    """A sliding-window layer: kernel, stride, padding, dilation (pairs), the value it pads
    with, and the layer applied without padding."""

    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    pad_value: float
    apply: object


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


def _spatial(m: nn.Module) -> _Spatial | None:
    if isinstance(m, nn.Conv2d) and m.padding_mode == "zeros" and not isinstance(m.padding, str):

        def conv(t):
            return F.conv2d(t, m.weight, m.bias, m.stride, 0, m.dilation, m.groups)

        return _Spatial(m.kernel_size, m.stride, m.padding, m.dilation, 0.0, conv)
    if isinstance(m, nn.MaxPool2d) and not m.return_indices:
        k, s = _pair(m.kernel_size), _pair(m.stride or m.kernel_size)
        d = _pair(m.dilation)
        # ceil_mode: the last windows run past the input; padding them with -inf is the same
        return _Spatial(k, s, _pair(m.padding), d, -math.inf, lambda t: F.max_pool2d(t, k, s, 0, d))
    if isinstance(m, nn.AvgPool2d) and not m.ceil_mode:
        k, s, p = _pair(m.kernel_size), _pair(m.stride or m.kernel_size), _pair(m.padding)
        if m.count_include_pad or p == (0, 0):  # the divisor is the kernel's size everywhere

            def pool(t):
                return F.avg_pool2d(t, k, s, 0, False, True, m.divisor_override)

            return _Spatial(k, s, p, (1, 1), 0.0, pool)
    return None


_POINTWISE = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.Hardtanh,
    nn.Hardswish, nn.Softplus, nn.Identity, nn.LocalResponseNorm,
)  # fmt: skip
_POINTWISE_FUNCTIONS = {F.relu, torch.relu, torch.sigmoid, torch.tanh, F.gelu, F.silu}
_POINTWISE_METHODS = {"relu", "relu_", "sigmoid", "tanh", "contiguous"}
_BINARY = {operator.add, torch.add, operator.mul, torch.mul, operator.sub, torch.sub}


def _pointwise_module(m: nn.Module, shape_in, shape_out) -> bool:
    """Whether module m acts on each position alone (in eval mode)."""
    if isinstance(m, _POINTWISE):
        return True
    if isinstance(m, nn.Dropout | nn.Dropout2d) or isinstance(m, nn.BatchNorm2d):
        return not m.training and getattr(m, "running_mean", 0) is not None
    # an adaptive pool to its input's own size is the identity
    return isinstance(m, nn.AdaptiveAvgPool2d | nn.AdaptiveMaxPool2d) and shape_in == shape_out


def _inplace(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    if node.op == "call_module":
        return bool(getattr(modules[node.target], "inplace", False))
    if node.op == "call_method":
        return node.target.endswith("_")
    return bool(node.kwargs.get("inplace", False))


def _box(lo: torch.Tensor, hi: torch.Tensor, n: int) -> tuple[torch.Tensor, int]:
    """One box size for the batch: the largest of hi - lo (exclusive ends), the starts moved
    inward where the box would cross the end of a map of n."""
    lo = lo.clamp(min=0)
    size = max(1, min(n, int((hi - lo).max())))
    return torch.minimum(lo, torch.full_like(lo, n - size)), size


class Incremental:
    """One image's clean activations, and the occluded images' forward passes from them."""

    def __init__(self, model: nn.Module, x: torch.Tensor, layer: str | None, full_above: float):
        try:
            tracer = LeafTracer(layer or "")
            self.graph = tracer.trace(model)
        except Exception as err:  # torch.fx fails in many ways on untraceable code
            raise IncrementalError(f"torch.fx cannot trace the model: {err}") from err
        self.root, self.full_above = tracer.root, full_above
        self.modules = dict(model.named_modules())
        self._order = {n: i for i, n in enumerate(self.graph.nodes)}
        self.layer = None
        if layer:
            runs = [n for n in self.graph.nodes if n.op == "call_module" and n.target == layer]
            if len(runs) != 1:
                raise IncrementalError(f"the layer {layer!r} runs {len(runs)} times, not once")
            self.layer = runs[0]
        self.clean: dict[fx.Node, object] = {}
        self._padded: dict[fx.Node, torch.Tensor] = {}  # a layer's clean input, padded
        self.first_full: fx.Node | None = None
        env = self.clean
        for node in self.graph.nodes:
            if node.op == "placeholder":
                env[node] = x[None].contiguous(memory_format=torch.channels_last)
            elif node.op == "output":
                self.logits = env[node.args[0]]
            else:
                args, kwargs = self._args(node, env, copy=_inplace(node, self.modules))
                env[node] = self._call(node, args, kwargs)
        self.unit = _strongest(self.clean[self.layer][0]) if self.layer else None

    def p_clean(self, target: int) -> float:
        return self.logits.softmax(1)[0, target].item()

    def describe(self) -> str:
        if self.first_full is None:
            return "incremental throughout"
        n = self.first_full
        name = n.target if n.op == "call_module" else n.name
        return f"incremental up to {name}, full passes from there"

    def _args(self, node, env, copy=False, full=False):
        def value(n):
            v = env[n]
            if full and isinstance(v, _Patch):
                return _full(v)
            return v.clone() if copy and isinstance(v, torch.Tensor) else v

        return fx.node.map_arg(node.args, value), fx.node.map_arg(node.kwargs, value)

    def _call(self, node: fx.Node, args, kwargs):
        if node.op == "get_attr":
            return operator.attrgetter(node.target)(self.root)
        if node.op == "call_module":
            return self.modules[node.target](*args, **kwargs)
        if node.op == "call_function":
            return node.target(*args, **kwargs)
        return getattr(args[0], node.target)(*args[1:], **kwargs)

    def run(self, corners: np.ndarray, window: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(logits (P, classes), the layer's unit totals (P,) or None) with the square at each
        top-left corner of `corners` (P, 2)."""
        image = self.clean[next(iter(self.graph.nodes))]
        at = torch.as_tensor(corners, dtype=torch.long, device=image.device)
        occluded = image.new_zeros(len(at), image.shape[1], window, window)
        env: dict[fx.Node, object] = {}
        full: set[fx.Node] = set()
        total = None
        for node in self.graph.nodes:
            if node.op == "placeholder":
                env[node] = _Patch(image, at[:, 0], at[:, 1], occluded)
                continue
            if node.op == "output":
                out = env[node.args[0]]
                logits = _full(out) if isinstance(out, _Patch) else out
                break
            inputs = node.all_input_nodes
            if not any(isinstance(env[n], _Patch) or n in full for n in inputs):
                env[node] = self.clean[node]  # does not depend on the image
                continue
            result = None if any(n in full for n in inputs) else self._step(node, env)
            if result is None:
                if self.first_full is None or self._order[node] < self._order[self.first_full]:
                    self.first_full = node
                args, kwargs = self._args(node, env, full=True)
                result = self._call(node, args, kwargs)
                full.add(node)
            env[node] = result
            if node is self.layer:
                total = self._total(result)
        return logits, total

    def _total(self, act) -> torch.Tensor:
        u = self.unit
        if isinstance(act, _Patch):
            one = _Patch(act.clean[:, u : u + 1], act.y, act.x, act.v[:, u : u + 1])
            return _full(one).flatten(1).sum(1)
        return _unit_total(act, u)

    def _step(self, node: fx.Node, env) -> _Patch | None:
        """The node's output as a patch, or None where it must run on the full batch."""
        patches = [n for n in node.all_input_nodes if isinstance(env[n], _Patch)]
        if len(patches) != len(node.all_input_nodes):
            return None  # mixes the image's activations with other tensors
        clean_out = self.clean[node]
        if not isinstance(clean_out, torch.Tensor) or clean_out.dim() != 4:
            return None
        first = env[patches[0]]
        copy = _inplace(node, self.modules)
        if node.op == "call_module" and len(node.args) == 1 and not node.kwargs:
            m = self.modules[node.target]
            layer = _spatial(m)
            if layer is not None:
                return self._sliding(node, layer, first)
            if _pointwise_module(m, first.clean.shape, clean_out.shape):
                v = m(first.v.clone() if copy else first.v)
                return _Patch(clean_out, first.y, first.x, v)
            return None
        unary = (node.op == "call_function" and node.target in _POINTWISE_FUNCTIONS) or (
            node.op == "call_method" and node.target in _POINTWISE_METHODS
        )
        if unary and len(patches) == 1 and node.args[0] is patches[0]:
            args, kwargs = self._args(node, {**env, patches[0]: first.v}, copy=copy)
            return _Patch(clean_out, first.y, first.x, self._call(node, args, kwargs))
        if node.op != "call_function":
            return None
        binary = node.target in _BINARY and not node.kwargs
        cat = node.target is torch.cat and node.kwargs.get(
            "dim", node.args[1] if len(node.args) > 1 else 0
        ) in (1, -3)
        return self._union(node, [env[n] for n in patches], patches, env) if binary or cat else None

    def _sliding(self, node: fx.Node, layer: _Spatial, p: _Patch) -> _Patch | None:
        clean_out = self.clean[node]
        ends, starts, sizes = [], [], []
        for axis, corner in enumerate((p.y, p.x)):
            k, s = layer.kernel[axis], layer.stride[axis]
            pad, d = layer.padding[axis], layer.dilation[axis]
            n_out = clean_out.shape[2 + axis]
            h = p.v.shape[2 + axis]
            # output positions o whose window o*s - pad .. o*s - pad + d*(k-1) meets the box
            lo = -((-(corner + pad - d * (k - 1))) // s)
            hi = (corner + h - 1 + pad) // s + 1
            start, size = _box(lo, hi.clamp(max=n_out), n_out)
            starts.append(start)
            sizes.append(size)
            ends.append((n_out - 1) * s - pad + d * (k - 1) + 1)  # the last window's end
        out_size = tuple(clean_out.shape[2:])
        if sizes[0] * sizes[1] >= self.full_above * out_size[0] * out_size[1]:
            return None
        if node not in self._padded:
            c = p.clean
            bottom = max(0, ends[0] - c.shape[2])
            right = max(0, ends[1] - c.shape[3])
            pad = (layer.padding[1], right, layer.padding[0], bottom)
            self._padded[node] = F.pad(c, pad, value=layer.pad_value)
        span = [
            (sizes[a] - 1) * layer.stride[a] + layer.dilation[a] * (layer.kernel[a] - 1) + 1
            for a in (0, 1)
        ]
        y = starts[0] * layer.stride[0] - layer.padding[0]
        x = starts[1] * layer.stride[1] - layer.padding[1]
        window = _window(self._padded[node], layer.padding, y, x, tuple(span), p)
        return _Patch(clean_out, starts[0], starts[1], layer.apply(window))

    def _union(self, node, parts: list[_Patch], nodes, env) -> _Patch | None:
        """A sum, product or concatenation of patches, on the union of their boxes."""
        clean_out = self.clean[node]
        if any(q.clean.shape[2:] != clean_out.shape[2:] for q in parts):
            return None  # broadcasting over positions
        corner, sizes = [], []
        for axis in (0, 1):
            lo = torch.stack([(q.y, q.x)[axis] for q in parts]).min(0).values
            hi = torch.stack([(q.y, q.x)[axis] + q.v.shape[2 + axis] for q in parts]).max(0).values
            start, size = _box(lo, hi, clean_out.shape[2 + axis])
            corner.append(start)
            sizes.append(size)
        if sizes[0] * sizes[1] >= self.full_above * clean_out.shape[2] * clean_out.shape[3]:
            return None
        windows = {
            n: _window(q.clean, (0, 0), corner[0], corner[1], tuple(sizes), q)
            for n, q in zip(nodes, parts, strict=True)
        }
        args, kwargs = self._args(node, {**env, **windows})
        return _Patch(clean_out, corner[0], corner[1], self._call(node, args, kwargs))


def object_vs_background(
    maps: OcclusionMaps, mask: np.ndarray, on_object: float = 0.75
) -> tuple[float, float] | None:
    """Mean drop of p(true class) with the square mostly on the object (>= `on_object` of its
    pixels) and entirely on the background; None when the image lacks either kind of position."""
    cover = np.array([mask[y0:y1, x0:x1].mean() for y0, y1, x0, x1 in maps.boxes])
    drop = maps.p_true_clean - maps.p_true.ravel()
    obj, bg = cover >= on_object, cover == 0
    if not obj.any() or not bg.any():
        return None
    return float(drop[obj].mean()), float(drop[bg].mean())
