"""Unit ablation (Zhou, Sun, Bau & Torralba 2018): how single units matter for each class.

Zeroing a unit and re-running the evaluation set costs, done naively, one full forward pass per
unit. `Ablation` does it once:

- `split_at` cuts the model's traced graph (torch.fx) at the ablated layer into the part below,
  which runs once over the data and whose output is cached (on the device when it fits, else in
  host memory, streamed back chunk by chunk), and the part above, which is re-run;
- the part above runs for many units at once, as one batch: copy g of a chunk zeroes unit g;
- the operations right after the layer that act on each channel alone and map a zero channel
  to a zero channel move below the cut, since zeroing a unit commutes with them: ReLUs
  (relu(0) = 0), dropout in eval mode, max and average pools (adaptive ones too). The class
  statistics (selectivity, class correlations) are taken before the pools, on the rectified
  activations;
- when the next layer is a convolution or a linear layer (after a flatten, and eval dropout,
  where the pools' output is flattened into it), its output is computed once and each ablation
  subtracts only the ablated unit's contribution: a convolution's unit slice over the unit's
  patches, a linear layer's columns of the unit (AlexNet conv5: 36 of fc6's 9216), instead of
  recomputing the layer.

`Ablation.correct(keep)` returns the number of correctly classified images per class for each
keep-mask (units zeroed where False): single units, or the cumulative curves.

Zhou et al. compare unit attributes as predictors of a unit's importance: its class selectivity
(`selectivity`), the L1 norm of its incoming weights (`weight_l1`, `unit_weights`) and its class
correlation (`Ablation.class_correlations`, the largest over classes).

`ablate(model, layer, loader)` is the face for notebooks: every unit zeroed in turn, the overall
and per-class accuracies against the intact model's.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy import sparse
from torch import fx, nn

from cvinterp.instrument import model_device


class AblationError(RuntimeError):
    """The model cannot be cut at this layer (e.g. a skip connection crosses the cut)."""


class LeafTracer(fx.Tracer):
    """Keeps one module (`leaf`, a module path: the ablated or recorded layer) and torch's own
    modules as single graph nodes."""

    def __init__(self, leaf: str):
        super().__init__()
        self.leaf = leaf

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return qualname == self.leaf or super().is_leaf_module(m, qualname)


_RELU_FUNCTIONS = {F.relu, torch.relu}


def _transparent(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    """A node that maps a zero channel to a zero channel, elementwise: ReLU, eval dropout."""
    if node.op == "call_module":
        m = modules[node.target]
        return isinstance(m, nn.ReLU) or (isinstance(m, nn.Dropout) and not m.training)
    if node.op == "call_function":
        return node.target in _RELU_FUNCTIONS
    return node.op == "call_method" and node.target in ("relu", "relu_")


_POOLS = (
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d,
)  # fmt: skip
_POOL_FUNCTIONS = {F.avg_pool2d, F.adaptive_avg_pool2d, F.max_pool2d, F.adaptive_max_pool2d}


def _per_channel(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    """A node that maps each channel to itself alone and a zero channel to a zero channel:
    what `_transparent` passes, identities, and pools (max, average, adaptive; the max of a
    window of zeros is 0, padding or not)."""
    if _transparent(node, modules):
        return True
    if node.op == "call_module":
        m = modules[node.target]
        return isinstance(m, nn.Identity) or (
            isinstance(m, _POOLS) and not getattr(m, "return_indices", False)
        )
    return (
        node.op == "call_function"
        and node.target in _POOL_FUNCTIONS
        and not node.kwargs.get("return_indices", False)
        and len(node.args) < 7  # F.max_pool2d's seventh argument is return_indices
    )


def _identity(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    return node.op == "call_module" and (
        isinstance(modules[node.target], nn.Identity)
        or (isinstance(modules[node.target], nn.Dropout) and not modules[node.target].training)
    )


def _flattens(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    """Whether `node` flattens its input from dimension 1 on (channel-major: unit u's positions
    are one block of columns)."""
    if node.op == "call_module":
        m = modules[node.target]
        return isinstance(m, nn.Flatten) and (m.start_dim, m.end_dim) == (1, -1)
    start = node.kwargs.get("start_dim", node.args[1] if len(node.args) > 1 else 0)
    end = node.kwargs.get("end_dim", node.args[2] if len(node.args) > 2 else -1)
    function = node.op == "call_function" and node.target is torch.flatten
    method = node.op == "call_method" and node.target == "flatten"
    return (function or method) and (start, end) == (1, -1)


def _subgraph(
    root: nn.Module,
    nodes: list[fx.Node],
    inputs: list[fx.Node],
    output: fx.Node | tuple[fx.Node, ...],
    path: str,
) -> fx.GraphModule:
    graph = fx.Graph()
    env = {n: graph.placeholder(n.name if n.op != "placeholder" else "x") for n in inputs}

    def arg(n: fx.Node) -> fx.Node:
        if n not in env:
            raise AblationError(
                f"the part of the model above {path!r} reads {n.name!r}, computed below it "
                "(a skip connection across the cut): ablate a layer no branch crosses"
            )
        return env[n]

    for n in nodes:
        env[n] = graph.node_copy(n, arg)
    graph.output(tuple(env[o] for o in output) if isinstance(output, tuple) else env[output])
    return fx.GraphModule(root, graph)


@dataclass
class Split:
    # input -> (the ablated layer's output rectified, the features at the cut: the same after
    # the per-channel operations that moved below the cut)
    lower: fx.GraphModule
    first: nn.Module | None  # the conv / linear layer right above, when there is one
    upper: fx.GraphModule  # first's output (or the features) -> the model's output
    flatten: bool = False  # first reads the features flattened from dimension 1

    def first_of(self, f: torch.Tensor) -> torch.Tensor:
        """The layer above on features f."""
        return self.first(f.flatten(1) if self.flatten else f)


def split_at(model: nn.Module, path: str, commute: bool = True) -> Split:
    """Cut `model` after module `path` and the ReLUs / eval dropouts right after it; with
    `commute`, also after the pools after those (`_per_channel`), and find the layer above that
    can be updated linearly, through a flatten."""
    tracer = LeafTracer(path)
    graph = tracer.trace(model)
    modules = dict(model.named_modules())
    nodes = list(graph.nodes)
    cuts = [n for n in nodes if n.op == "call_module" and n.target == path]
    if len(cuts) != 1:
        raise AblationError(f"module {path!r} runs {len(cuts)} times in the traced model, not once")
    cut = cuts[0]
    while len(cut.users) == 1 and _transparent(next(iter(cut.users)), modules):
        cut = next(iter(cut.users))
    rectified = cut

    def after(node: fx.Node) -> fx.Node | None:
        """The one user of node, when it comes right after it and reads nothing else."""
        user = next(iter(node.users)) if len(node.users) == 1 else None
        ok = user is not None and nodes.index(user) == nodes.index(node) + 1
        return user if ok and user.all_input_nodes == [node] else None

    while commute and (user := after(cut)) is not None and _per_channel(user, modules):
        cut = user
    at = nodes.index(cut)
    placeholders = [n for n in nodes if n.op == "placeholder"]
    if len(placeholders) != 1:
        raise AblationError("the model must take one input")
    (output,) = [n for n in nodes if n.op == "output"]
    lower = _subgraph(tracer.root, nodes[1 : at + 1], placeholders, (rectified, cut), path)
    above = [n for n in nodes[at + 1 :] if n.op != "output"]
    first, flatten, reads = None, False, cut
    if commute and (user := after(cut)) is not None and _flattens(user, modules):
        reads = user  # a linear layer may read the flattened features, through identities
        while (user := after(reads)) is not None and _identity(user, modules):
            reads = user
    skip = above.index(reads) + 1 if reads is not cut else 0
    top = above[skip] if len(above) > skip else None
    if top is not None and len(reads.users) == 1 and top.op == "call_module":
        m = modules[top.target]
        conv = (
            isinstance(m, nn.Conv2d)
            and m.groups == 1
            and m.padding_mode == "zeros"
            and not isinstance(m.padding, str)
            and reads is cut
        )
        if (conv or isinstance(m, nn.Linear)) and top.args == (reads,) and not top.kwargs:
            first, flatten = m, reads is not cut
    start = top if first is not None else cut
    rest = above[skip + 1 :] if first is not None else above
    upper = _subgraph(tracer.root, rest, [start], output.args[0], path)
    return Split(lower, first, upper, flatten)


def _contribution(first: nn.Module, x: torch.Tensor, units: torch.Tensor) -> torch.Tensor:
    """(g, n, ...) what each of the g units adds to `first`'s output on the n inputs `x`."""
    xs = x[:, units]
    if isinstance(first, nn.Linear) and x.dim() > 2:
        # x (n, C, ...) flattened into the layer: unit u adds its block of positions times
        # its block of columns
        w = first.weight.view(first.out_features, x.shape[1], -1)[:, units]  # (O, g, S)
        return torch.einsum("ngs,ogs->gno", xs.flatten(2), w)
    if isinstance(first, nn.Linear):  # x (n, C): unit u adds x[:, u] * W[:, u]
        return xs.T[:, :, None] * first.weight[:, units].T[:, None, :]
    # a convolution is a matrix product over unfolded patches: unit u's share is its weight
    # slice times its own patch rows (one batched product for all g units)
    n, g = xs.shape[:2]
    kh, kw = first.kernel_size
    cols = F.unfold(xs, (kh, kw), first.dilation, first.padding, first.stride)  # (n, g*k, L)
    cols = cols.view(n, g, kh * kw, -1)
    w = first.weight[:, units].flatten(2)  # (O, g, k)
    out = torch.einsum("ogk,ngkl->gnol", w, cols)
    h = (x.shape[2] + 2 * first.padding[0] - first.dilation[0] * (kh - 1) - 1) // first.stride[0]
    wd = (x.shape[3] + 2 * first.padding[1] - first.dilation[1] * (kw - 1) - 1) // first.stride[1]
    return out.reshape(g, n, -1, h + 1, wd + 1)


def device_free_bytes(device) -> int | None:
    """Free memory of a CUDA device in bytes (`torch.cuda.mem_get_info`); None for a device
    that does not report it (the CPU: the cache then shares the host memory anyway)."""
    device = torch.device(device)
    if device.type != "cuda":
        return None
    return torch.cuda.mem_get_info(device)[0]


#: Device memory kept free beside the cache: the CUDA context's growth, cuDNN's workspaces and
#: the allocator's fragmentation.
RESERVE_BYTES = 2**30
#: Chunk-sized tensors the passes above the cut hold at once: the group of edited copies of a
#: chunk (16 by default), their output, the part above's activations.
WORKING_CHUNKS = 64


def working_bytes(chunk_bytes: int) -> int:
    """Device memory the passes above the cut need beside the cache, for chunks (one batch of
    features) of `chunk_bytes`."""
    return RESERVE_BYTES + WORKING_CHUNKS * chunk_bytes


def cache_on_device(
    total_bytes: float, cache_mb: float, free_bytes: int | None, working: int
) -> bool:
    """Whether `total_bytes` of cached features stay on the device: they fit in the `cache_mb`
    the config allows and, where the device reports its free memory (`free_bytes`, measured
    with the model and a batch already on it), in that free memory less `working` (what the
    passes above the cut need). Otherwise they go to host memory and stream back chunk by chunk
    (the same numbers, more copies)."""
    if total_bytes > cache_mb * 2**20:
        return False
    return free_bytes is None or total_bytes <= free_bytes - working


class Ablation:
    """The evaluation set's features at the cut, cached once; the part above re-run per edit."""

    def __init__(
        self,
        model: nn.Module,
        path: str,
        device,
        *,
        linear_update: bool = True,
        commute: bool = True,
    ):
        model.eval()  # the split is traced in eval mode (dropout is the identity)
        self.split = split_at(model, path, commute)
        self.device = torch.device(device)
        # cuDNN's TF32 convolutions would compute the layer once at lower precision than the
        # subtracted contributions, and can flip a prediction: recompute the layer instead
        tf32 = self.device.type == "cuda" and torch.backends.cudnn.allow_tf32
        self.linear_update = linear_update and self.split.first is not None and not tf32
        self.chunks: list[tuple[torch.Tensor, torch.Tensor]] = []  # (features, labels)
        self.means: list[torch.Tensor] = []  # per chunk (n, units): spatial means, float64
        self.classes = 0
        self.on_host = False

    @torch.no_grad()
    def cache(
        self,
        batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
        cache_mb: float,
        n_images: int,
        progress=None,
    ) -> None:
        """Run the part below once over (input, label) batches; keep its output on the device
        if all of it fits in `cache_mb` and in the device's free memory less what the passes
        above the cut need (`cache_on_device`), else in host memory (pinned on a CUDA device,
        so that the chunks stream back with asynchronous copies)."""
        host, self.chunks, self.means = None, [], []
        pin = self.device.type == "cuda"
        for x, y in batches:
            act, f = self.split.lower(x.to(self.device))
            # the class statistics' activations: the layer's rectified output, before any pool
            self.means.append(
                act.flatten(2).mean(2, dtype=torch.float64) if act.dim() > 2 else act.double()
            )
            del act
            if host is None:
                chunk = f.numel() * f.element_size()
                total = f[0].numel() * f.element_size() * n_images
                host = not cache_on_device(
                    total, cache_mb, device_free_bytes(self.device), working_bytes(chunk)
                )
            if host:
                f = f.to("cpu").pin_memory() if pin else f.cpu()
            self.chunks.append((f, y.to(self.device)))
            self.classes = max(self.classes, int(y.max()) + 1)
            if progress is not None:
                progress.update(len(x))
        self.on_host = bool(host)

    @property
    def units(self) -> int:
        return self.chunks[0][0].shape[1]

    def _features(self):
        for f, y in self.chunks:
            yield f.to(self.device, non_blocking=True), y

    @torch.no_grad()
    def class_means(self) -> torch.Tensor:
        """(classes, units) mean activation (over positions and images) of each class."""
        sums = torch.zeros(self.classes, self.units, dtype=torch.float64, device=self.device)
        counts = torch.zeros(self.classes, dtype=torch.float64, device=self.device)
        for per_image, (_, y) in zip(self.means, self.chunks, strict=True):
            sums.index_add_(0, y, per_image)
            counts += torch.bincount(y, minlength=self.classes).double()
        return sums / counts.clamp(min=1)[:, None]

    def _count(
        self, logits: torch.Tensor, y: torch.Tensor, g: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """((g, classes) correct predictions, (g, n) per-image correctness) of g edits of one
        chunk of n images."""
        right = logits.argmax(1).view(g, -1) == y.view(1, -1)
        index = torch.arange(g, device=y.device)[:, None] * self.classes + y.view(1, -1)
        counts = torch.bincount(index[right], minlength=g * self.classes)
        return counts.view(g, self.classes), right

    @torch.no_grad()
    def correct(
        self,
        keep: torch.Tensor,
        group: int = 16,
        progress=None,
        *,
        per_image: bool = False,
        images: torch.Tensor | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """keep (E, units) bool, False = zeroed -> (E, classes) correctly classified images;
        `progress` (a tqdm bar) advances by each chunk's images. With `per_image`, also the
        (E, images) bool correctness of every image (on the host, in the cached order: the
        per-class counts recomputed under other labels give permutation nulls). `images`, a
        bool mask over the cached images (in the cached order), restricts the evaluation to
        those images (only they are run: the cost scales with their number); the per-image
        columns are then theirs alone, in the cached order."""
        keep = keep.to(self.device)
        out = torch.zeros(len(keep), self.classes, dtype=torch.int64, device=self.device)
        chosen = None if images is None else torch.as_tensor(images, dtype=torch.bool).cpu()
        if chosen is not None and len(chosen) != sum(len(y) for _, y in self.chunks):
            raise ValueError("correct: the image mask must cover every cached image")
        start, images = 0, []
        for f, y in self._features():
            size = len(y)  # the chunk's images, for the progress bar
            if chosen is not None:
                at = chosen[start : start + size]
                start += size
                if not bool(at.any()):
                    if progress is not None:
                        progress.update(size)
                    continue
                at = at.to(y.device)
                f, y = f[at], y[at]
            rows = []
            base = self.split.first_of(f) if self.linear_update else None
            for e0 in range(0, len(keep), group):
                k = keep[e0 : e0 + group]
                g = len(k)
                single = (~k).sum(1) == 1
                if self.linear_update and bool(single.all()):
                    units = (~k).float().argmax(1)
                    y_edit = base[None] - _contribution(self.split.first, f, units)
                    logits = self.split.upper(y_edit.flatten(0, 1))
                else:
                    shape = (g, 1, k.shape[1]) + (1,) * (f.dim() - 2)
                    edited = (f[None] * k.view(shape).to(f.dtype)).flatten(0, 1)
                    if self.split.first is not None:
                        edited = self.split.first_of(edited)
                    logits = self.split.upper(edited)
                counts, right = self._count(logits, y, g)
                out[e0 : e0 + g] += counts
                if per_image:
                    rows.append(right.cpu())
            if per_image:
                images.append(torch.cat(rows))
            if progress is not None:
                progress.update(size)
        if per_image and not images:
            images = [torch.zeros(len(keep), 0, dtype=torch.bool)]
        return (out, torch.cat(images, 1)) if per_image else out

    def labels(self) -> torch.Tensor:
        """(images,) the labels of the cached images, in the cached order (on the host)."""
        return torch.cat([y.cpu() for _, y in self.chunks])

    @torch.no_grad()
    def class_correlations(self) -> torch.Tensor:
        """(units, outputs) float64 Pearson correlation, over the cached images, between each
        unit's activation (the spatial mean of its cached, rectified features) and the intact
        model's predicted probability of each class (the softmax of its output). A pair whose
        activation or probability is constant over the images has correlation 0.

        Streams over the chunks, summing in float64 the values shifted by the first image's
        (which keeps the sums small, and makes a constant column exactly 0)."""
        n, shift, sums = 0, None, None
        for a, (f, _) in zip(self.means, self._features(), strict=True):
            z = self.split.first_of(f) if self.split.first is not None else f
            p = torch.softmax(self.split.upper(z).double(), 1)
            if shift is None:
                shift = a[0].clone(), p[0].clone()
            a, p = a - shift[0], p - shift[1]
            parts = (a.sum(0), p.sum(0), (a * a).sum(0), (p * p).sum(0), a.T @ p)
            sums = parts if sums is None else tuple(s + q for s, q in zip(sums, parts, strict=True))
            n += len(a)
        sa, sp, saa, spp, sap = sums
        cov = sap - sa[:, None] * sp[None] / n
        sd_a = (saa - sa * sa / n).clamp(min=0).sqrt()[:, None]
        sd_p = (spp - sp * sp / n).clamp(min=0).sqrt()[None]
        # the two spreads multiplied after their square roots: their product cannot underflow
        # while both are positive
        ok = (sd_a > 0) & (sd_p > 0)
        den = torch.where(ok, sd_a * sd_p, torch.ones_like(cov))
        return torch.where(ok, cov / den, torch.zeros_like(cov))

    def class_totals(self) -> torch.Tensor:
        totals = torch.zeros(self.classes, dtype=torch.int64, device=self.device)
        for _, y in self.chunks:
            totals += torch.bincount(y, minlength=self.classes)
        return totals


def single_units(units: int) -> torch.Tensor:
    """Keep-masks that zero one unit each: (units, units), False on the diagonal."""
    return ~torch.eye(units, dtype=torch.bool)


def cumulative(order: Iterable[int], units: int, steps: Iterable[int]) -> torch.Tensor:
    """Keep-masks that zero the first k units of `order`, for each k in `steps`."""
    order, steps = list(order), list(steps)
    keep = torch.ones(len(steps), units, dtype=torch.bool)
    for i, k in enumerate(steps):
        keep[i, order[:k]] = False
    return keep


def selectivity(class_means: torch.Tensor) -> np.ndarray:
    """Class selectivity per unit: (mu_max - mu_-max) / (mu_max + mu_-max), mu_-max the mean
    over the other classes of the class-mean activation (Morcos et al. 2018; Zhou et al. 2018);
    0 for a unit that never fires."""
    m = class_means.double()
    top = m.max(0).values
    rest = (m.sum(0) - top) / max(m.shape[0] - 1, 1)
    den = top + rest
    sel = torch.where(den > 0, (top - rest) / den.clamp(min=1e-30), torch.zeros_like(den))
    return sel.cpu().numpy()


def class_drops(delta: np.ndarray, labels: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """(units, len(classes)) float64 accuracy drop of each class from per-image outcomes:
    `delta` (units, images) is the intact model's correctness minus the ablated one's (+1 an
    image lost, -1 one gained), `labels` (images,) the class of each image, `classes` the
    class ids of the columns (each with an image)."""
    labels, classes = np.asarray(labels), np.asarray(classes)
    order = np.argsort(classes)
    at = np.searchsorted(classes, labels, sorter=order).clip(max=len(classes) - 1)
    column = order[at]
    rows = np.flatnonzero(classes[column] == labels)  # images of the listed classes
    # a sparse one-hot (images, classes): the product costs units x images, whatever the
    # number of classes (ImageNet's 1,000 included)
    onehot = sparse.csr_matrix(
        (np.ones(len(rows)), (rows, column[rows])), shape=(len(labels), len(classes))
    )
    lost = np.asarray((onehot.T @ np.asarray(delta, dtype=np.float64).T).T)
    return lost / np.asarray(onehot.sum(0)).ravel()


def selective_hits(drops: np.ndarray, top: np.ndarray) -> np.ndarray:
    """(units,) whether each unit's largest class drop falls on its most selective class (the
    column `top[u]` of `drops`): 1/k when that class is one of k classes tied for the largest
    drop, 0 when it is not or when no class drops at all."""
    drops = np.asarray(drops, dtype=np.float64)
    largest = drops.max(1, keepdims=True)
    tied = np.abs(drops - largest) <= 1e-12
    on_top = tied[np.arange(len(drops)), np.asarray(top)]
    return np.where(on_top & (largest[:, 0] > 0), 1.0 / tied.sum(1), 0.0)


def label_permutation_null(
    delta: np.ndarray,
    labels: np.ndarray,
    classes: np.ndarray,
    top: np.ndarray,
    permutations: int,
    seed: int,
) -> tuple[np.ndarray, np.ndarray]:
    """((units,) largest class drop, (units,) `selective_hits`), each the mean over
    `permutations` shufflings of the evaluation images' labels: the same ablation outcomes,
    image by image, with the class structure removed (class sizes and every unit's overall
    change kept). The null of a class-specific effect of ablation."""
    rng = np.random.default_rng(seed)
    delta = np.asarray(delta, dtype=np.float32)
    labels = np.asarray(labels)
    top_drop = np.zeros(len(delta))
    hits = np.zeros(len(delta))
    for _ in range(permutations):
        drops = class_drops(delta, labels[rng.permutation(len(labels))], classes)
        top_drop += drops.max(1)
        hits += selective_hits(drops, top)
    return top_drop / max(permutations, 1), hits / max(permutations, 1)


_WEIGHTED = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def _passes_channels(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    """An elementwise op that keeps each channel where it is, in any mode: what `_transparent`
    passes, identities, and dropout in training mode too."""
    if _transparent(node, modules):
        return True
    if node.op == "call_module":
        return isinstance(modules[node.target], nn.Identity | nn.Dropout)
    return node.op == "call_function" and node.target is F.dropout


def _describe(node: fx.Node, modules: dict[str, nn.Module], path: str) -> str:
    """What a traced node of module `path` is, for an error message."""
    if node.op == "call_module":
        full = f"{path}.{node.target}" if path else node.target
        return f"module {full!r} ({type(modules[node.target]).__name__})"
    if node.op == "placeholder":
        return "its input"
    name = getattr(node.target, "__name__", node.target)
    return f"{node.op.removeprefix('call_').replace('_', ' ')} {name!r}"


def unit_weights(model: nn.Module, path: str) -> list[nn.Module]:
    """The convolutions / linear layers whose output channels are the units of module `path`,
    in the order of the units: the module itself if it is one, else the layers its traced
    output comes from through ReLUs, identities, dropouts and `torch.cat` along channels (e.g.
    SqueezeNet's Fire: expand1x1's channels, then expand3x3's). Raises `AblationError`, naming
    the layer, when the output comes from anything else."""
    layer = model.get_submodule(path)
    if isinstance(layer, _WEIGHTED):
        return [layer]

    def fail(why: str):
        return AblationError(f"cannot find the incoming weights of the units of {path!r}: {why}")

    try:
        graph = fx.Tracer().trace(layer)
    except Exception as err:
        raise fail(f"torch.fx cannot trace it ({type(err).__name__}: {err})") from err
    modules = dict(layer.named_modules())

    def sources(node) -> list[nn.Module]:
        if not isinstance(node, fx.Node):
            raise fail(f"its output is not a tensor computed from its input ({node!r})")
        if node.op == "call_module" and isinstance(modules[node.target], _WEIGHTED):
            return [modules[node.target]]
        if _passes_channels(node, modules):
            return sources(node.args[0])
        if node.op == "call_function" and node.target is torch.cat:
            dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
            if dim == 1:
                return [m for part in node.args[0] for m in sources(part)]
        raise fail(
            f"its output comes from {_describe(node, modules, path)}, not from convolutions or "
            "linear layers through ReLUs and concatenations along channels"
        )

    (output,) = [n for n in graph.nodes if n.op == "output"]
    return sources(output.args[0])


def weight_l1(model: nn.Module, path: str) -> np.ndarray:
    """(units,) float64 L1 norm of each unit's incoming weights: the sum of |w| over its filter
    (a convolution's weight[u], a linear layer's row u; the bias excluded), for the units of
    module `path` as `unit_weights` finds them."""
    norms = [
        m.weight.detach().abs().flatten(1).sum(1, dtype=torch.float64).cpu()
        for m in unit_weights(model, path)
    ]
    return torch.cat(norms).numpy()


def unit_predictors(
    engine: Ablation, model: nn.Module, path: str, classes: torch.Tensor
) -> tuple[np.ndarray, np.ndarray, str | None]:
    """(l1_norm, class_correlation, why there is no L1 norm or None) of every unit of the
    engine's layer (module `path` of `model`): Zhou et al.'s predictors beside selectivity.
    L1 norms are NaN when the layer's units have no filter of their own (a residual block's
    sum); class correlations are the largest over `classes` (indices, e.g. those with images).
    """
    try:
        l1, missing = weight_l1(model, path), None
    except AblationError as err:
        l1, missing = np.full(engine.units, np.nan), str(err)
    if len(l1) != engine.units:
        raise AblationError(f"{path!r} has {engine.units} units but {len(l1)} filters")
    corr = engine.class_correlations().cpu()[:, classes].max(1).values.numpy()
    return l1, corr, missing


@dataclass
class UnitAblation:
    """Accuracy with each of the chosen units of a layer zeroed in turn."""

    units: np.ndarray  # (E,) the unit zeroed in each row
    accuracy: np.ndarray  # (E,) overall accuracy with that unit zeroed
    class_accuracy: np.ndarray  # (E, classes) per-class accuracy with it zeroed (NaN: no image)
    base_accuracy: float  # overall accuracy of the intact model
    base_class_accuracy: np.ndarray  # (classes,) per-class accuracy of the intact model
    class_totals: np.ndarray  # (classes,) images of each class
    selectivity: np.ndarray  # (E,) class selectivity of each unit (`selectivity`)
    l1_norm: np.ndarray  # (E,) L1 norm of each unit's incoming weights (`weight_l1`; NaN: none)
    class_correlation: np.ndarray  # (E,) largest over classes of `Ablation.class_correlations`


def ablate(
    model: nn.Module,
    layer: str,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    units: Iterable[int] | None = None,
    group: int = 16,
    device=None,
    cache_mb: float = 1024,
    progress=None,
) -> UnitAblation:
    """Zero each unit of `layer` (a module path) in turn and measure the accuracy on `loader`
    (batches of (preprocessed images, integer labels), e.g. a DataLoader): Zhou et al. 2018's
    single-unit ablation, with the `Ablation` engine (exact: the same counts as one full
    forward pass per unit).

    units: the units to zero (default: all). group: ablations run as one batch. The layer's
    output is cached once, on the device when it fits in `cache_mb`. Runs on the model's
    device (or `device`); the model must be traceable by torch.fx. Puts the model in eval
    mode. `progress` (a tqdm bar) advances by the images of each pass.

    Each unit's predictors of its importance come along: selectivity, the L1 norm of its
    incoming weights (NaN when the layer's output is not a convolution's or a linear layer's,
    e.g. a residual block) and its class correlation, the largest over the classes with images.
    """
    device = torch.device(device) if device is not None else model_device(model)
    engine = Ablation(model, layer, device or torch.device("cpu"))
    dataset = getattr(loader, "dataset", None)
    n_images = len(dataset) if hasattr(dataset, "__len__") else float("inf")
    engine.cache(loader, cache_mb, n_images, progress=progress)
    if not engine.chunks:
        raise ValueError("ablate: the loader yielded no images")
    chosen = list(range(engine.units)) if units is None else [int(u) for u in units]
    if any(not 0 <= u < engine.units for u in chosen):
        raise ValueError(f"ablate: units must be in 0..{engine.units - 1}")
    keep = torch.ones(len(chosen) + 1, engine.units, dtype=torch.bool)
    keep[torch.arange(1, len(chosen) + 1), chosen] = False  # row 0: the intact model
    correct = engine.correct(keep, group=group, progress=progress).double().cpu()
    totals = engine.class_totals().double().cpu()
    per_class = (correct / totals).where(totals > 0, torch.nan)
    overall = correct.sum(1) / totals.sum()
    seen = torch.nonzero(totals > 0).flatten()
    l1, corr, _ = unit_predictors(engine, model, layer, seen)
    return UnitAblation(
        units=np.array(chosen, dtype=np.int64),
        accuracy=overall[1:].numpy(),
        class_accuracy=per_class[1:].numpy(),
        base_accuracy=float(overall[0]),
        base_class_accuracy=per_class[0].numpy(),
        class_totals=totals.long().numpy(),
        selectivity=selectivity(engine.class_means())[chosen],
        l1_norm=l1[chosen],
        class_correlation=corr[chosen],
    )
