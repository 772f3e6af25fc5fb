"""The facts a trained model carries besides its weights, declared once, attached and read here."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from kacfast.process import KacProcess

__all__ = ["ModelFacts", "facts_of", "attach_facts"]


@dataclass(frozen=True)
class ModelFacts:
    """What sampling needs to know about a trained network beyond its weights and architecture
    (``sample_shape`` and ``num_classes`` are the network's own attributes).

    Attributes:
        process: the Kac process it was trained on (Kac teachers and students), else None.
        grid: a distilled student's time grid (T, ..., 0), else None.
        absorbed_guidance: the guidance scale a student learned to reproduce (sample it at w = 1).
        pretrained: the ``kacfast.pretrained.PRETRAINED`` entry of a shipped model.
        prediction: what a DDPM baseline's network predicts ("v_prediction"); None = eps.
    """
    process: KacProcess | None = None
    grid: tuple[float, ...] | None = None
    absorbed_guidance: float | None = None
    pretrained: dict | None = None
    prediction: str | None = None


def facts_of(model) -> ModelFacts:
    """The facts attached to ``model`` (empty ModelFacts for a plain network)."""
    return getattr(model, "kacfast_facts", None) or ModelFacts()


def attach_facts(model, **changes):
    """Set some of ``model``'s :class:`ModelFacts` (the only writer); returns the model."""
    if "grid" in changes and changes["grid"] is not None:
        changes["grid"] = tuple(float(t) for t in changes["grid"])
    model.kacfast_facts = dataclasses.replace(facts_of(model), **changes)
    return model
