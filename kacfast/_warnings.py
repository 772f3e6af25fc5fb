"""Warnings attributed to the user's line: the first frame outside kacfast and torch (whose
decorators, e.g. torch.no_grad, add frames of their own), wherever in kacfast the warning starts."""
from __future__ import annotations

import os
import sys
import warnings

import torch

_INTERNAL = tuple(os.path.dirname(os.path.abspath(package.__file__)) + os.sep
                  for package in (sys.modules[__package__], torch))


def warn(message: str, category: type[Warning] = UserWarning) -> None:
    """warnings.warn(message, category) at the caller's first frame outside kacfast and torch."""
    level, frame = 2, sys._getframe(1)
    while frame.f_back is not None and os.path.abspath(frame.f_code.co_filename).startswith(_INTERNAL):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=level)
