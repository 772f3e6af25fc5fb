"""kacfast: fast few-step image generation with Kac flows (DistillKac)."""
from kacfast import ops
from kacfast.process import KacProcess
from kacfast.sampling import integrate, nfe, quadratic_grid, sample, uniform_grid

__version__ = "0.1.0"
__all__ = ["KacProcess", "sample", "integrate", "uniform_grid", "quadratic_grid", "nfe", "ops",
           "__version__"]
