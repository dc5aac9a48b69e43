"""One module per paper's method, named after the method; the methods a notebook needs are
re-exported here:

    from cvinterp.methods import guided_backprop, occlusion, top_activations, actmax, dissect

Each takes a model and keyword arguments, returns a tensor or a dataclass whose fields name its
parts, runs on the model's device, works under `torch.no_grad()` and `torch.inference_mode()`,
and leaves no hook on the model. (`cvinterp.methods.occlusion` and `cvinterp.methods.actmax` are
the functions here; import their modules' helpers by name, e.g.
`from cvinterp.methods.occlusion import positions`.)
"""

from cvinterp.methods.ablation import UnitAblation, ablate
from cvinterp.methods.actmax import Visualisation, actmax
from cvinterp.methods.backward import deconvnet, guided_backprop, saliency
from cvinterp.methods.dissection import Dissection, dissect
from cvinterp.methods.occlusion import OcclusionMaps, occlusion
from cvinterp.methods.top_images import TopK, top_activations

__all__ = [
    "Dissection",
    "OcclusionMaps",
    "TopK",
    "UnitAblation",
    "Visualisation",
    "ablate",
    "actmax",
    "deconvnet",
    "dissect",
    "guided_backprop",
    "occlusion",
    "saliency",
    "top_activations",
]
