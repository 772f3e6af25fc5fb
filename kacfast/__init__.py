"""kacfast: fast few-step image generation with Kac flows (DistillKac)."""
from kacfast import ops
from kacfast.process import KacProcess

__version__ = "0.1.0"
__all__ = ["KacProcess", "ops", "__version__"]
