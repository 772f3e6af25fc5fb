"""kacfast: fast few-step image generation with Kac flows (DistillKac)."""
from kacfast import ops
from kacfast.process import KacProcess
from kacfast.compiled import Sampler, compile_sampler
from kacfast.sampling import integrate, nfe, quadratic_grid, sample, uniform_grid
from kacfast.facts import ModelFacts, facts_of
from kacfast._device import tune_cpu_allocator
from kacfast.pretrained import list_pretrained, load_pretrained

__version__ = "0.1.0"
__all__ = ["KacProcess", "sample", "compile_sampler", "Sampler", "integrate", "uniform_grid",
           "quadratic_grid", "nfe", "ops", "distill", "list_pretrained", "load_pretrained",
           "facts_of", "ModelFacts", "tune_cpu_allocator", "__version__"]


def __getattr__(name):
    # the training stack (safetensors, the loop) loads only when distillation is asked for
    if name == "distill":
        from kacfast.training.distill import distill
        return distill
    raise AttributeError(f"module 'kacfast' has no attribute {name!r}")
