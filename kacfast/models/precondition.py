"""Input / output preconditioning of a Kac velocity network (the teacher lever of README "Teacher
levers"): the network F sees c_in(t) x_t and its output is scaled by c_out(t), so that both its
input and its regression target have unit mean square at every t (kacfast.formulas.kac_preconditioning
gives both in closed form and by quadrature; EDM's c_in / c_out play the same role for its
denoiser).
"""
from __future__ import annotations

import torch
from torch import nn

from kacfast.formulas import CLOCKS, kac_preconditioning

__all__ = ["KacPreconditioner", "PRECONDITION_KEYS"]

#: the settings a preconditioned UNet records in its config (`precondition=`)
PRECONDITION_KEYS = ("a", "c", "T", "clock", "rms_data")


class KacPreconditioner(nn.Module):
    """(c_in, c_out) at raw times t, linearly interpolated from a table over [0, T].

    Args:
        a, c, T, clock: the Kac process the network is trained on (kacfast.KacProcess fields).
        rms_data: sqrt(E[x0^2]) per coordinate of the training data (> 0).
        points: table size (default 1025; the scales change on the time scale 1/a, so the linear
            interpolation is within 1e-5 relative of the formula for a <= 25).
    The table is rebuilt from these numbers when a model is built (buffers not saved), so a
    checkpoint carries only the numbers.
    """

    def __init__(self, a: float, c: float, T: float, clock: str, rms_data: float, points: int = 1025):
        super().__init__()
        for name, value in (("a", a), ("c", c), ("T", T), ("rms_data", rms_data)):
            if not (isinstance(value, (int, float)) and value > 0):
                raise ValueError(f"precondition: {name} must be a number > 0, got {value!r}.")
        if clock not in CLOCKS:
            raise ValueError(f"precondition: clock must be one of {CLOCKS}, got {clock!r}.")
        self.T = float(T)
        grid = torch.linspace(0.0, self.T, points, dtype=torch.float64)
        c_in, c_out = kac_preconditioning(grid, a, c, T, clock, rms_data)
        self.register_buffer("table", torch.stack([c_in, c_out], -1).float(), persistent=False)

    def forward(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """t (B,) raw times (clamped to [0, T]) -> (c_in, c_out), each (B,) float32."""
        points = self.table.shape[0]
        position = (t.float() / self.T).clamp(0.0, 1.0) * (points - 1)
        low = position.floor().clamp(max=points - 2)
        row = torch.lerp(self.table[low.long()], self.table[low.long() + 1],
                         (position - low)[:, None])
        return row[:, 0], row[:, 1]
