"""The one instrument every method uses to look inside a model.

`Instrument(model, record=..., edit=..., relu=..., maxpool=...)` is a context manager that

- records the outputs of named modules (in the autograd graph, so a method can back-propagate
  from a recorded unit, or detached for streaming statistics);
- edits them (any `output -> output` function: ablation, replacement, clamping);
- swaps the backward rule of every ReLU and max-pool the model runs, however it calls them
  (a module, a module called twice, `F.relu`, `torch.relu`, `x.relu_()`, in-place or not, and
  the ReLUs written another way: `F.threshold(x, 0, 0)`, `x.clamp(min=0)`,
  `torch.clamp_min(x, 0)`, `torch.maximum(x, zero)`, `torch.where(x > 0, x, 0)`):

  relu="gradient"   the true gradient (Simonyan et al. 2014's saliency)
  relu="deconvnet"  rectify the backward signal, ignore the forward gate (Zeiler & Fergus 2014)
  relu="guided"     both: gate by the forward pass and rectify (Springenberg et al. 2015)
  relu="linear"     pass the signal through unchanged (receptive fields)

  maxpool="switches"  route the signal to the recorded max location (the gradient; deconvnet's
                      unpooling with switches)
  maxpool="uniform"   spread it evenly over the pooling window (unpooling without switches)

ReLUs and max-pools are caught at the function level with a `TorchFunctionMode`, not with module
hooks, so reused and functional ReLUs get the rule too; the forward value is always the model's
own. In-place ReLUs run in place, as outside the instrument; a recorded output that one is about
to overwrite is first replaced by a copy (in the graph), so recordings keep their values. Any
other in-place change to a recorded output is an error, and so is recording a module that runs
twice in one forward pass, or asking for a deconvnet/guided rule on a net with another
nonlinearity (sigmoid, tanh, GELU, a leaky ReLU, a clamp with a maximum, the maximum of two
tensors, a `where` that gates a tensor on its sign with a non-zero other branch, ...): those
rules are defined for ReLU networks only. Hooks and the mode are removed on exit, also after an
error.

Methods that back-propagate run inside `gradients_on()`, so that they work when called under
`torch.no_grad()` or `torch.inference_mode()`; `normal_tensor` copies a tensor made in inference
mode, which autograd cannot save for backward.
"""

from __future__ import annotations

import contextlib
import itertools
import numbers
from collections.abc import Callable, Iterable, Iterator, Mapping

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils.weak import WeakIdKeyDictionary

RELU_RULES = ("gradient", "deconvnet", "guided", "linear")
POOL_RULES = ("switches", "uniform")


@contextlib.contextmanager
def gradients_on() -> Iterator[None]:
    """Autograd on, whatever the caller's mode: inference mode off and gradients enabled, for a
    method that back-propagates (`torch.no_grad()` or `torch.inference_mode()` around the call
    is undone inside). Also a decorator: `@gradients_on()`."""
    with torch.inference_mode(False), torch.enable_grad():
        yield


def normal_tensor(t):
    """`t`, or a normal copy of it when it is an inference tensor (made under
    `torch.inference_mode()`), which autograd cannot save for backward. Use inside
    `gradients_on()`; anything else is returned as it is."""
    if isinstance(t, torch.Tensor) and t.is_inference() and not torch.is_inference_mode_enabled():
        return t.clone()
    return t


def model_device(model: nn.Module) -> torch.device | None:
    """The device of the model's first parameter or buffer (None: it has neither)."""
    for t in itertools.chain(model.parameters(), model.buffers()):
        return t.device
    return None


def _present(owner, *names: str) -> set:
    """The functions `owner.<name>` that this torch version has."""
    return {getattr(owner, n) for n in names if hasattr(owner, n)}


def _everywhere(*names: str) -> set:
    return _present(torch, *names) | _present(torch.Tensor, *names) | _present(F, *names)


# ReLUs and the other ways of writing one; each kind is parsed by `_Rules._as_relu`
_RELU = {F.relu, torch.relu, torch.Tensor.relu}  # F.relu's `inplace` flag is parsed
_RELU_IN_PLACE = _everywhere("relu_")
_THRESHOLD = {F.threshold, torch.threshold}  # F.threshold's `inplace` flag is parsed
_THRESHOLD_IN_PLACE = _everywhere("threshold_")
_CLAMP = _everywhere("clamp", "clip")
_CLAMP_IN_PLACE = _everywhere("clamp_", "clip_")
_CLAMP_MIN = _everywhere("clamp_min")
_CLAMP_MIN_IN_PLACE = _everywhere("clamp_min_")
_MAXIMUM = _everywhere("maximum", "fmax")
_MAX = _everywhere("max")  # a ReLU only in its binary form, max(x, other tensor)
_WHERE = _everywhere("where")
_RELU_LIKE = (
    _RELU
    | _RELU_IN_PLACE
    | _THRESHOLD
    | _THRESHOLD_IN_PLACE
    | _CLAMP
    | _CLAMP_IN_PLACE
    | _CLAMP_MIN
    | _CLAMP_MIN_IN_PLACE
    | _MAXIMUM
    | _MAX
    | _WHERE
)
# the forms that can modify their input in place (a recording may need protecting from them)
_MAY_BE_IN_PLACE = (
    _RELU
    | _RELU_IN_PLACE
    | _THRESHOLD
    | _THRESHOLD_IN_PLACE
    | _CLAMP_IN_PLACE
    | _CLAMP_MIN_IN_PLACE
)
# comparisons: `torch.where(x > 0, x, 0)` is recognised by where its condition came from
_COMPARE = {
    func: op
    for op, names in (
        (">", ("gt", "greater")),
        (">=", ("ge", "greater_equal")),
        ("<", ("lt", "less")),
        ("<=", ("le", "less_equal")),
    )
    for func in _everywhere(*names) | _present(torch.Tensor, f"__{names[0]}__")
}
_FLIPPED = {">": "<", ">=": "<=", "<": ">", "<=": ">="}
_MAXPOOL = {F.max_pool2d, F.max_pool2d_with_indices, torch.max_pool2d}
# Nonlinearities for which the deconvnet / guided rules are undefined: module, functional,
# Tensor-method and in-place forms, as they reach `__torch_function__` (nn.Sigmoid calls
# torch.sigmoid, F.sigmoid calls Tensor.sigmoid, nn.LogSigmoid torch._C._nn.log_sigmoid, ...).
_OTHER_NONLINEAR = (
    _everywhere(
        "sigmoid",
        "sigmoid_",
        "tanh",
        "tanh_",
        "hardsigmoid",
        "softsign",
        "logsigmoid",
        "glu",
        "gelu",
        "silu",
        "elu",
        "elu_",
        "selu",
        "selu_",
        "celu",
        "celu_",
        "leaky_relu",
        "leaky_relu_",
        "relu6",
        "hardtanh",
        "hardtanh_",
        "hardswish",
        "mish",
        "softplus",
        "prelu",
        "rrelu",
        "rrelu_",
        "softshrink",
        "hardshrink",
        "tanhshrink",
        "clamp_max",
        "clamp_max_",
        "minimum",
        "fmin",
    )
    | _present(torch.special, "expit")
    | _present(
        torch._C._nn,
        "log_sigmoid",
        "hardsigmoid",
        "hardsigmoid_",
        "glu",
        "gelu",
        "silu",
        "silu_",
        "elu",
        "elu_",
        "leaky_relu",
        "leaky_relu_",
        "hardtanh",
        "hardtanh_",
        "hardswish",
        "hardswish_",
        "mish",
        "mish_",
        "softplus",
        "softshrink",
        "relu6",
        "rrelu_with_noise",
    )
)
_MIN = _everywhere("min")  # a gate only in its binary form, min(x, other tensor)
_ADAPTIVE_MAXPOOL = {F.adaptive_max_pool2d}
_OTHER_POOL = {F.adaptive_max_pool2d_with_indices, F.max_pool1d, F.max_pool3d}


class InstrumentError(RuntimeError):
    """The instrument cannot give a right answer for this model and request."""


class _Stopped(InstrumentError):
    """Raised once every recorded output is in (stop_early); `Instrument.forward` catches it."""

    def __init__(self):
        super().__init__(
            "forward pass stopped after the last recording (stop_early=True): "
            "run the model with Instrument.forward(x)"
        )


class _ReLU(torch.autograd.Function):
    """A ReLU of x: the forward value computed by the model's own call (`compute`, in place
    when `inplace`); the backward rule chosen by `rule`."""

    @staticmethod
    def forward(ctx, x, rule: str, inplace: bool, compute: Callable[[], torch.Tensor]):
        out = compute()
        if inplace:
            ctx.mark_dirty(x)
        ctx.rule = rule
        ctx.save_for_backward(out)  # out > 0 exactly where x > 0
        return out

    @staticmethod
    def backward(ctx, grad):
        (out,) = ctx.saved_tensors
        rule = ctx.rule
        if rule == "gradient":
            grad = grad * (out > 0)
        elif rule == "deconvnet":
            grad = grad.clamp(min=0)
        elif rule == "guided":
            grad = grad.clamp(min=0) * (out > 0)
        return grad, None, None, None  # "linear": unchanged


def _uniform_maxpool(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False):
    """Max-pool forward, average-pool backward: the signal is spread over each window."""
    if dilation not in (1, (1, 1), [1, 1]):
        raise InstrumentError("maxpool='uniform' needs undilated max-pools")
    return _spread_gradient(
        F.max_pool2d(x, kernel_size, stride, padding, 1, ceil_mode),
        F.avg_pool2d(x, kernel_size, stride, padding, ceil_mode, count_include_pad=True),
    )


def _spread_gradient(peak: torch.Tensor, spread: torch.Tensor) -> torch.Tensor:
    """The value of `peak` with the gradient of `spread` (an average pool over the same
    windows)."""
    return peak.detach() + (spread - spread.detach())


def _arg(args, kwargs, i: int, name: str, default=None):
    """Argument `name` of a call, given at position i or by keyword."""
    return args[i] if len(args) > i else kwargs.get(name, default)


def _is_zero(v) -> bool:
    """A number 0, or a constant tensor (no gradient) whose values are all 0."""
    if isinstance(v, torch.Tensor):
        return v.numel() > 0 and not v.requires_grad and bool((v == 0).all())
    return isinstance(v, numbers.Number) and not isinstance(v, bool) and v == 0


def _fits(x: torch.Tensor, *others) -> bool:
    """Whether x combined elementwise with `others` keeps x's shape and dtype."""
    shapes = [o.shape for o in others if isinstance(o, torch.Tensor)]
    if torch.broadcast_shapes(x.shape, *shapes) != x.shape:
        return False
    return all(torch.result_type(x, o) == x.dtype for o in others)


def _storage(t: torch.Tensor) -> int | None:
    try:
        return t.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError):  # tensors without storage
        return None


def _same_data(a, b) -> bool:
    """The same values in the same memory: `a is b`, or a copy-free alias (e.g. a detach())."""
    if a is b:
        return True
    if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)):
        return False
    return (
        _storage(a) is not None
        and _storage(a) == _storage(b)
        and a.storage_offset() == b.storage_offset()
        and a.shape == b.shape
        and a.stride() == b.stride()
        and a.dtype == b.dtype
    )


def _name(func) -> str:
    return getattr(func, "__name__", str(func))


class _Rules(TorchFunctionMode):
    def __init__(self, relu: str, maxpool: str, protect: Callable[[torch.Tensor], None]):
        super().__init__()
        self.relu, self.maxpool, self.protect = relu, maxpool, protect
        # boolean tensors made by comparing a tensor with something: [(tensor, op, other)]
        self.signs = WeakIdKeyDictionary()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _COMPARE and self.relu != "gradient":
            out = func(*args, **kwargs)
            self._note_sign(func, args, kwargs, out)
            return out
        if func in _RELU_LIKE and (self.relu != "gradient" or func in _MAY_BE_IN_PLACE):
            relu = self._as_relu(func, args, kwargs)
            if isinstance(relu, tuple):
                x, inplace = relu
                if inplace:
                    self.protect(x)
                if self.relu == "gradient":
                    return func(*args, **kwargs)
                return _ReLU.apply(x, self.relu, inplace, lambda: func(*args, **kwargs))
            if relu is not None:
                self._not_a_relu_network(relu)
            return func(*args, **kwargs)
        if func in _MAXPOOL and self.maxpool == "uniform":
            if kwargs.get("return_indices") or func is F.max_pool2d_with_indices:
                raise InstrumentError("maxpool='uniform' cannot return max-pool indices")
            kwargs.pop("return_indices", None)
            return _uniform_maxpool(*args, **kwargs)
        if func in _ADAPTIVE_MAXPOOL and self.maxpool == "uniform":
            if kwargs.get("return_indices") or (len(args) > 2 and args[2]):
                raise InstrumentError("maxpool='uniform' cannot return max-pool indices")
            x, size = args[0], args[1] if len(args) > 1 else kwargs["output_size"]
            return _spread_gradient(F.adaptive_max_pool2d(x, size), F.adaptive_avg_pool2d(x, size))
        if func in _OTHER_NONLINEAR or (
            func in _MIN and isinstance(_arg(args, kwargs, 1, "other"), torch.Tensor)
        ):
            self._not_a_relu_network(_name(func))
        if self.maxpool == "uniform" and func in _OTHER_POOL:
            raise InstrumentError(
                f"maxpool='uniform' covers max_pool2d only; the model calls {_name(func)}"
            )
        return func(*args, **kwargs)

    def _not_a_relu_network(self, what: str) -> None:
        if self.relu in ("deconvnet", "guided"):
            raise InstrumentError(
                f"the model calls {what}: the {self.relu} rule is defined for ReLU networks only"
            )

    def _note_sign(self, func, args, kwargs, out) -> None:
        """Remember what a comparison compared, for `torch.where(x > 0, x, 0)`."""
        a, b = _arg(args, kwargs, 0, "input"), _arg(args, kwargs, 1, "other")
        if not isinstance(out, torch.Tensor):
            return
        op = _COMPARE[func]
        facts = [(a, op, b)] if isinstance(a, torch.Tensor) else []
        if isinstance(b, torch.Tensor):
            facts.append((b, _FLIPPED[op], a))
        self.signs[out] = facts

    def _as_relu(self, func, args, kwargs) -> tuple[torch.Tensor, bool] | str | None:
        """(x, in place) when the call is a ReLU of x; a description of the call when it is a
        nonlinear gate that is not a ReLU; None for anything else."""
        x = _arg(args, kwargs, 0, "input")
        if func in _RELU:
            return x, func is F.relu and bool(_arg(args, kwargs, 1, "inplace", False))
        if func in _RELU_IN_PLACE:
            return x, True
        if func in _THRESHOLD or func in _THRESHOLD_IN_PLACE:
            threshold, value = _arg(args, kwargs, 1, "threshold"), _arg(args, kwargs, 2, "value")
            inplace = func in _THRESHOLD_IN_PLACE or (
                func is F.threshold and bool(_arg(args, kwargs, 3, "inplace", False))
            )
            if _is_zero(threshold) and _is_zero(value):
                return x, inplace
            return f"threshold(x, {threshold}, {value}), not a ReLU"
        if func in _CLAMP or func in _CLAMP_IN_PLACE:
            low, high = _arg(args, kwargs, 1, "min"), _arg(args, kwargs, 2, "max")
            if low is None and high is None:
                return None
            if high is None and _is_zero(low) and _fits(x, low):
                return x, func in _CLAMP_IN_PLACE
            return f"{_name(func)}(min={low}, max={high}), not a ReLU"
        if func in _CLAMP_MIN or func in _CLAMP_MIN_IN_PLACE:
            low = _arg(args, kwargs, 1, "min")
            if _is_zero(low) and _fits(x, low):
                return x, func in _CLAMP_MIN_IN_PLACE
            return f"{_name(func)}(x, {low}), not a ReLU"
        if func in _MAXIMUM or func in _MAX:
            other = _arg(args, kwargs, 1, "other")
            if not isinstance(other, torch.Tensor):  # torch.max(x) or torch.max(x, dim)
                return None
            for a, b in ((x, other), (other, x)):
                if _is_zero(b) and _fits(a, b):
                    return a, False
            return f"{_name(func)} of two tensors, not a ReLU"
        if func in _WHERE:
            return self._where_as_relu(func, args, kwargs)
        return None

    def _where_as_relu(self, func, args, kwargs) -> tuple[torch.Tensor, bool] | str | None:
        if func is torch.Tensor.where:  # x.where(condition, y)
            a, cond, b = args[0], _arg(args, kwargs, 1, "condition"), _arg(args, kwargs, 2, "other")
        else:
            cond, a, b = (
                _arg(args, kwargs, 0, "condition"),
                _arg(args, kwargs, 1, "input"),
                _arg(args, kwargs, 2, "other"),
            )
        facts = self.signs.get(cond) if isinstance(cond, torch.Tensor) else None
        for tensor, op, threshold in facts or ():
            if _same_data(tensor, a):  # where(x > 0, x, 0)
                if op in (">", ">=") and _is_zero(threshold) and _is_zero(b) and _fits(a, cond, b):
                    return a, False
            elif _same_data(tensor, b):  # where(x < 0, 0, x)
                if op in ("<", "<=") and _is_zero(threshold) and _is_zero(a) and _fits(b, cond, a):
                    return b, False
            else:
                continue
            return f"torch.where gating a tensor on x {op} {threshold}, not a ReLU"
        return None


def resolve_modules(model: nn.Module, paths: Iterable[str]) -> dict[str, nn.Module]:
    """Module paths ('features.3', 'conv5') -> modules, with a clear error for a wrong path."""
    named = dict(model.named_modules())
    missing = [p for p in paths if p not in named]
    if missing:
        raise InstrumentError(
            f"no module {', '.join(map(repr, missing))} in {type(model).__name__}; "
            f"modules: {', '.join(n for n in named if n)}"
        )
    return {p: named[p] for p in paths}


class Instrument:
    """Record, edit and change the backward rules of a model for the duration of a `with`.

    record: module paths whose outputs are kept in `self.outputs[path]` after each forward.
    edit:   {module path: function(output) -> new output}, applied before recording.
    detach: keep recordings out of the graph (streaming statistics, no gradients needed).
    stop_early: abandon the forward pass once every recorded output is in (nothing above the
        deepest recorded layer runs); run the model with `forward(x)`, which returns None then.
    """

    def __init__(
        self,
        model: nn.Module,
        record: Iterable[str] = (),
        edit: Mapping[str, Callable[[torch.Tensor], torch.Tensor]] | None = None,
        *,
        relu: str = "gradient",
        maxpool: str = "switches",
        detach: bool = False,
        stop_early: bool = False,
    ):
        if relu not in RELU_RULES:
            raise InstrumentError(f"relu rule {relu!r}; choose one of {RELU_RULES}")
        if maxpool not in POOL_RULES:
            raise InstrumentError(f"maxpool rule {maxpool!r}; choose one of {POOL_RULES}")
        self.model = model
        self.record = list(record)
        self.edit = dict(edit or {})
        self.relu, self.maxpool, self.detach = relu, maxpool, detach
        if stop_early and not self.record:
            raise InstrumentError("stop_early needs something to record")
        self.stop_early = stop_early
        self.modules = resolve_modules(model, dict.fromkeys(self.record + list(self.edit)))
        self.outputs: dict[str, torch.Tensor] = {}
        self._versions: dict[str, int] = {}
        self._calls: dict[str, int] = {}
        self._handles: list = []
        self._mode: _Rules | None = None

    def __getitem__(self, path: str) -> torch.Tensor:
        if path not in self.outputs:
            raise InstrumentError(f"{path!r} was not recorded (recording: {self.record})")
        return self.outputs[path]

    def _start_pass(self, module, args):
        self.outputs.clear()
        self._versions.clear()
        self._calls = dict.fromkeys(self.modules, 0)

    def _end_pass(self, module, args, output):
        for path, tensor in self.outputs.items():
            if self._versions[path] is not None and tensor._version != self._versions[path]:
                raise InstrumentError(
                    f"the output of {path!r} was changed in place after it was recorded; "
                    "record a module whose output the model does not overwrite"
                )

    def _hook(self, path: str):
        def hook(module, args, output):
            self._calls[path] = self._calls.get(path, 0) + 1
            if self._calls[path] > 1:
                raise InstrumentError(
                    f"module {path!r} ran {self._calls[path]} times in one forward pass, so "
                    "its output is ambiguous; record or edit a module that runs once"
                )
            if not isinstance(output, torch.Tensor):
                raise InstrumentError(f"module {path!r} returns {type(output).__name__}")
            if path in self.edit:
                output = self.edit[path](output)
            if path in self.record:
                kept = output.detach() if self.detach else output
                self.outputs[path] = kept
                # inference tensors (torch.inference_mode) carry no version counter
                self._versions[path] = None if kept.is_inference() else kept._version
                if self.stop_early and len(self.outputs) == len(self.record):
                    raise _Stopped
            return output

        return hook

    def _protect(self, tensor: torch.Tensor) -> None:
        """`tensor` is about to be rectified in place: a recording that shares its memory is
        replaced by a copy (in the graph: back-propagating from it still works)."""
        where = _storage(tensor)
        for path, kept in self.outputs.items():
            if where is not None and _storage(kept) == where:
                kept = kept.clone()
                self.outputs[path] = kept
                self._versions[path] = None if kept.is_inference() else kept._version

    def forward(self, *args, **kwargs):
        """Run the model; with stop_early, return None once the recordings are in."""
        try:
            return self.model(*args, **kwargs)
        except _Stopped:
            return None

    def __enter__(self) -> Instrument:
        try:
            self._handles.append(self.model.register_forward_pre_hook(self._start_pass))
            self._handles.append(self.model.register_forward_hook(self._end_pass))
            for path, module in self.modules.items():
                self._handles.append(module.register_forward_hook(self._hook(path)))
            self._mode = _Rules(self.relu, self.maxpool, self._protect)
            self._mode.__enter__()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Remove every hook and the backward rules (idempotent)."""
        if self._mode is not None:
            mode, self._mode = self._mode, None
            mode.__exit__(None, None, None)
        while self._handles:
            self._handles.pop().remove()


def has_hooks(model: nn.Module) -> bool:
    """Whether any module of `model` still carries a forward (pre-)hook."""
    return any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
