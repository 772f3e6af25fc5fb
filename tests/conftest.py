"""Session-wide test setup."""
import os

# Triton picks its CPU interpreter when it is first imported, and other libraries import it
# (diffusers does, so collecting tests/test_diffusers_bridge.py would): choose the interpreter
# before any test module is collected. A machine with a CUDA GPU keeps the compiled kernels
# (tests/test_triton_gpu.py); test_triton*.py set the interpreter themselves there.
if "TRITON_INTERPRET" not in os.environ:
    import torch

    if not torch.cuda.is_available():
        os.environ["TRITON_INTERPRET"] = "1"
