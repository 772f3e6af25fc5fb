"""Input / output preconditioning of a Kac velocity network (the teacher lever of README "Teacher
levers"): the network F sees c_in(t) x_t and its output is scaled by c_out(t), so that both its
input and its regression target have unit mean square at every t (kacfast.formulas.kac_preconditioning
gives both in closed form and by quadrature; EDM's c_in / c_out play the same role for its
denoiser).
"""
from __future__ import annotations

import math
import numbers

import torch
from torch import nn

from kacfast.formulas import kac_preconditioning
from kacfast.process import KacProcess

__all__ = ["KacPreconditioner", "PRECONDITION_KEYS"]

#: the settings a preconditioned UNet records in its config (`precondition=`)
PRECONDITION_KEYS = ("a", "c", "T", "clock", "rms_data")


class KacPreconditioner(nn.Module):
    """(c_in, c_out) at raw times t, linearly interpolated from a table over [0, T].

    Args:
        a, c, T, clock: the Kac process the network is trained on (kacfast.KacProcess fields).
        rms_data: sqrt(E[x0^2]) per coordinate of the training data (> 0).
        points: table size (default: 1024 intervals per 25 units of a T, at least 1024 intervals;
            the scales change on the time scale 1/a, and the linear interpolation is then within
            about 2e-5 relative of the formula).
    The table is built on the CPU in float64 from these numbers whenever a model is built (on any
    device, "meta" included) and is not saved: a checkpoint carries only the numbers.
    """

    def __init__(self, a: float, c: float, T: float, clock: str, rms_data: float,
                 points: int | None = None):
        super().__init__()
        KacProcess(a=a, c=c, T=T, clock=clock)  # the same checks, the same messages
        if not (isinstance(rms_data, numbers.Real) and not isinstance(rms_data, bool) and rms_data > 0):
            raise ValueError(f"rms_data (the data's sqrt(E[x0^2])) must be a number > 0, got {rms_data!r}.")
        self.T = float(T)
        if points is None:
            points = 1024 * max(1, math.ceil(a * T / 25)) + 1
        grid = torch.linspace(0.0, self.T, points, dtype=torch.float64, device="cpu")
        c_in, c_out = kac_preconditioning(grid, a, c, T, clock, rms_data)
        self.register_buffer("table", torch.stack([c_in, c_out], -1).float(), persistent=False)

    def forward(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """t (B,) raw times (clamped to [0, T]) -> (c_in, c_out), each (B,) float32 (whatever dtype
        the module was cast to)."""
        table = self.table.float()
        points = table.shape[0]
        position = (t.float() / self.T).clamp(0.0, 1.0) * (points - 1)
        low = position.floor().clamp(max=points - 2)
        index = low.long()
        row = torch.lerp(table[index], table[index + 1], (position - low)[:, None])
        return row[:, 0], row[:, 1]
