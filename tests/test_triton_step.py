"""Triton guided step under TRITON_INTERPRET=1 against the reference."""
import os

os.environ["TRITON_INTERPRET"] = "1"  # before any triton kernel is imported

import pytest  # noqa: E402
import torch  # noqa: E402

pytest.importorskip("triton")

from kacfast import ops  # noqa: E402
from kacfast.ops import reference  # noqa: E402


@pytest.mark.parametrize("shape", [(1,), (1023,), (3, 5, 7)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("guided,with_prev,clamp,return_v",
                         [(False, False, False, False), (True, True, True, True),
                          (True, False, True, False), (False, True, False, True)])
def test_triton_guided_step_equals_reference(shape, dtype, guided, with_prev, clamp, return_v):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=gen).to(dtype)
    v = torch.randn(((2 * shape[0],) + shape[1:]) if guided else shape, generator=gen).to(dtype)
    v_prev = torch.randn(shape, generator=gen).to(dtype) if with_prev else None
    args = dict(guidance=1.7, h=0.03, alpha=1.25, beta=-0.25, clamp=clamp, return_v=return_v)
    ref_x, ref_v = reference.guided_step(x, v, v_prev, **args)
    with ops.use_backend("triton"):
        out_x, out_v = ops.guided_step(x, v, v_prev, **args)
    tol = 1e-6 if dtype == torch.float32 else 1e-3
    torch.testing.assert_close(out_x, ref_x, atol=tol, rtol=tol)
    assert out_v.numel() == (x.numel() if return_v else 0)
    if return_v:
        torch.testing.assert_close(out_v, ref_v, atol=tol, rtol=tol)


def test_triton_guided_step_opcheck():
    x = torch.randn(3, 4)
    torch.library.opcheck(torch.ops.kacfast.triton_kac_guided_step.default,
                          (x, torch.randn(6, 4), torch.randn(3, 4), 1.5, 0.1, 1.0, 0.5, True, True))
