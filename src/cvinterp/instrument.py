"""The one instrument every method uses to look inside a model.

`Instrument(model, record=..., edit=..., relu=..., maxpool=...)` is a context manager that

- records the outputs of named modules (in the autograd graph, so a method can back-propagate
  from a recorded unit, or detached for streaming statistics);
- edits them (any `output -> output` function: ablation, replacement, clamping);
- swaps the backward rule of every ReLU and max-pool the model runs, however it calls them
  (a module, a module called twice, `F.relu`, `torch.relu`, `x.relu_()`, in-place or not):

  relu="gradient"   the true gradient (Simonyan et al. 2014's saliency)
  relu="deconvnet"  rectify the backward signal, ignore the forward gate (Zeiler & Fergus 2014)
  relu="guided"     both: gate by the forward pass and rectify (Springenberg et al. 2015)
  relu="linear"     pass the signal through unchanged (receptive fields)

  maxpool="switches"  route the signal to the recorded max location (the gradient; deconvnet's
                      unpooling with switches)
  maxpool="uniform"   spread it evenly over the pooling window (unpooling without switches)

ReLUs and max-pools are caught at the function level with a `TorchFunctionMode`, not with module
hooks, so reused and functional ReLUs get the rule too. In-place ReLUs called through `F.relu`
(all `nn.ReLU(inplace=True)` modules) run out of place inside the instrument, so a recorded
output is never overwritten; any other in-place change to a recorded output is an error, and so
is recording a module that runs twice in one forward pass, or asking for a deconvnet/guided rule
on a net with another nonlinearity. Hooks and the mode are removed on exit, also after an error.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

RELU_RULES = ("gradient", "deconvnet", "guided", "linear")
POOL_RULES = ("switches", "uniform")

_RELU_OUT_OF_PLACE = {F.relu, torch.relu, torch.Tensor.relu}
_RELU_IN_PLACE = {F.relu_, torch.relu_, torch.Tensor.relu_}
_MAXPOOL = {F.max_pool2d, F.max_pool2d_with_indices, torch.max_pool2d}
# Nonlinearities for which the deconvnet / guided rules are undefined.
_OTHER_NONLINEAR = {
    F.gelu, F.silu, F.elu, F.selu, F.celu, F.leaky_relu, F.relu6, F.hardtanh, F.hardswish,
    F.mish, F.softplus, F.prelu, F.rrelu, torch.Tensor.clamp, torch.clamp, torch.clamp_min,
    torch.Tensor.clamp_min, torch.Tensor.clamp_, torch.Tensor.clamp_min_,
}  # fmt: skip
_ADAPTIVE_MAXPOOL = {F.adaptive_max_pool2d}
_OTHER_POOL = {F.adaptive_max_pool2d_with_indices, F.max_pool1d, F.max_pool3d}


class InstrumentError(RuntimeError):
    """The instrument cannot give a right answer for this model and request."""


class _Stopped(InstrumentError):
    """Raised once every recorded output is in (stop_early); `Instrument.forward` catches it."""

    def __init__(self):
        super().__init__("forward pass stopped after the last recording (stop_early=True): "
                         "run the model with Instrument.forward(x)")  # fmt: skip


class _ReLU(torch.autograd.Function):
    """max(x, 0) forward; the backward rule chosen by `rule`."""

    @staticmethod
    def forward(ctx, x, rule: str, inplace: bool):
        if inplace:
            out = x.clamp_(min=0)
            ctx.mark_dirty(x)
        else:
            out = x.clamp(min=0)
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
        return grad, None, None  # "linear": unchanged


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


class _Rules(TorchFunctionMode):
    def __init__(self, relu: str, maxpool: str):
        super().__init__()
        self.relu, self.maxpool = relu, maxpool

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _RELU_OUT_OF_PLACE:
            # F.relu(x, inplace=True) is how nn.ReLU(inplace=True) runs: its caller uses the
            # returned value, so computing out of place is exact and keeps recordings intact
            return _ReLU.apply(args[0], self.relu, False)
        if func in _RELU_IN_PLACE:  # x.relu_() may be called for its side effect: keep it
            return _ReLU.apply(args[0], self.relu, True)
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
        if self.relu in ("deconvnet", "guided") and func in _OTHER_NONLINEAR:
            raise InstrumentError(
                f"the model calls {getattr(func, '__name__', func)}: the {self.relu} rule is "
                "defined for ReLU networks only"
            )
        if self.maxpool == "uniform" and func in _OTHER_POOL:
            raise InstrumentError(
                f"maxpool='uniform' covers max_pool2d only; the model calls "
                f"{getattr(func, '__name__', func)}"
            )
        return func(*args, **kwargs)


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
            self._mode = _Rules(self.relu, self.maxpool)
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
