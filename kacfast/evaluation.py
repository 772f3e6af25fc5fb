"""The quality protocol: every row scored by independent judges, over seeds, against a stated floor.

A row (a model with its sampler, steps and guidance) is sampled once per seed; each seed's samples
are scored against that seed's reference set in the feature space of every judge
(:data:`kacfast.metrics.JUDGES`: two classifiers that share no weights, data order or
architecture; Inception as a third when a local weights file is given):

* ``<judge>_fd``, ``<judge>_kid``: Frechet distance and KID of the judge's features (not FID
  unless the judge is Inception);
* ``<judge>_precision``, ``<judge>_recall``: k-NN manifold precision / recall (Kynkaenniemi et al.);
* ``<judge>_accuracy``: the judge's accuracy on the conditioning labels (classifier judges).

2-D point sets get ``energy_distance``, ``sliced_w2`` and, on ``gmm9``, the mode coverage.

References (:class:`Protocol`, ``reference=``):

* ``"train"`` (default): for each seed, a seeded random split of the training images into the
  floor set (``n`` images) and the reference (the rest: 2,500 of MNIST-5k's 4,500 at n = 2,000).
  The models trained on all of them, so this asks "does it match the data it learned";
* ``"test"``: the held-out split (500 MNIST digits: a small, noisy reference), floor ``n``
  training images.

The floor row scores ``n`` real images (disjoint from the reference) exactly like a model: the
value of every metric that a perfect sampler would get at this sample size. Each metric is
reported as the mean over seeds with a 95% Student-t interval; two rows are compared per seed
(paired: same reference) by :func:`compare`.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable

import torch

from kacfast import data as _data
from kacfast import metrics

__all__ = ["Protocol", "Evaluator", "compare", "format_table", "REFERENCES", "balanced_labels"]

REFERENCES = ("train", "test")
#: metric suffix -> True when higher is better
_IMAGE_METRICS = {"fd": False, "kid": False, "precision": True, "recall": True, "accuracy": True}
_POINT_METRICS = {"energy_distance": False, "sliced_w2": False, "modes_covered": True,
                  "mode_fraction": True}


@dataclass(frozen=True)
class Protocol:
    """What every row of one table shares.

    Args:
        dataset: a :func:`kacfast.data.load_dataset` name (image or 2-D).
        n: samples per row and seed (>= 2,000 for the README's tables).
        seeds: independent seeds (>= 2; 3 or more for a useful interval).
        reference: ``"train"`` or ``"test"`` (see the module docstring).
        judges: names in :data:`kacfast.metrics.JUDGES` (image data only).
        k: neighbours of the precision / recall estimate.
        kid_subsets: KID subsets (subset size min(1000, n, reference)).
    """
    dataset: str
    n: int = 2000
    seeds: tuple[int, ...] = (0, 1, 2)
    reference: str = "train"
    judges: tuple[str, ...] = tuple(metrics.JUDGES)
    k: int = 3
    kid_subsets: int = 100

    def __post_init__(self):
        object.__setattr__(self, "seeds", tuple(int(s) for s in self.seeds))
        object.__setattr__(self, "judges", tuple(self.judges))
        if len(set(self.seeds)) < 2 or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"need at least 2 distinct seeds for an interval, got {self.seeds}.")
        if self.n <= self.k:
            raise ValueError(f"n must exceed k = {self.k}, got {self.n}.")
        if self.reference not in REFERENCES:
            raise ValueError(f"reference must be one of {REFERENCES}, got {self.reference!r}.")
        unknown = [j for j in self.judges if j not in metrics.JUDGES]
        if unknown:
            raise ValueError(f"unknown judges {unknown}; choose from {', '.join(metrics.JUDGES)}.")

    def as_dict(self) -> dict:
        return {"dataset": self.dataset, "n": self.n, "seeds": list(self.seeds),
                "reference": self.reference, "judges": list(self.judges), "k": self.k}


def balanced_labels(n: int, num_classes: int | None) -> torch.Tensor | None:
    """0, 1, ..., C-1, 0, 1, ...: the class-balanced labels every conditional row samples."""
    return None if num_classes is None else torch.arange(n) % num_classes


@dataclass
class _Judge:
    features: Callable[[torch.Tensor], torch.Tensor]
    classifier: torch.nn.Module | None = None


@dataclass
class Evaluator:
    """Scores rows under one :class:`Protocol`; caches the data, the judges and each seed's
    reference features, so a sweep of many rows pays for them once.

    Args:
        protocol: the shared settings.
        judge_steps: training steps of the classifier judges (default: the dataset's).
        inception_weights: a local Inception weights file: adds the ``inception`` judge
            (needs kacfast[fid]; nothing is downloaded).
        data_kwargs: passed to ``load_dataset`` (e.g. ``root=``).
    """
    protocol: Protocol
    judge_steps: int | None = None
    inception_weights: str | os.PathLike | None = None
    data_kwargs: dict = field(default_factory=dict)

    def __post_init__(self):
        p = self.protocol
        self.train_x, self.train_y = _data.load_dataset(p.dataset, "train", seed=0, **self.data_kwargs)
        self.points = self.train_x.dim() == 2
        test = p.reference == "test"
        self.test_x = _data.load_dataset(p.dataset, "test", seed=0, **self.data_kwargs)[0] if test else None
        room = len(self.train_x) - (0 if test else p.k + 1)  # k-NN radii need k + 1 points
        if p.n > room:
            raise ValueError(f"{p.dataset} has {len(self.train_x)} training items: n = {p.n} leaves "
                             f"no room for the floor set{'' if test else ' and a reference'} (max n "
                             f"{room}).")
        self.judges: dict[str, _Judge] = {}
        if not self.points:
            for name, clf in metrics.load_judges(p.dataset, p.judges, steps=self.judge_steps,
                                                 **self.data_kwargs).items():
                self.judges[name] = _Judge(lambda x, c=clf: metrics.classifier_features(c, x), clf)
            if self.inception_weights:
                path = self.inception_weights
                self.judges["inception"] = _Judge(lambda x: metrics.inception_features(x, path))
        # what every row records of its judges (fixed for this Evaluator: hashed once)
        self.judge_digests = {name: judge.classifier.weights_digest()
                              for name, judge in self.judges.items() if judge.classifier is not None}
        self._reference_cache: dict[int, tuple] = {}

    # -- references ------------------------------------------------------------------------------
    def _split(self, seed: int):
        """(reference, floor images, floor labels, {judge: reference features}) of one seed."""
        if seed not in self._reference_cache:
            p = self.protocol
            perm = torch.randperm(len(self.train_x), generator=torch.Generator().manual_seed(10_007 + seed))
            floor = perm[:p.n]
            reference = self.test_x if p.reference == "test" else self.train_x[perm[p.n:]]
            feats = {name: j.features(reference) for name, j in self.judges.items()}
            labels = None if self.train_y is None else self.train_y[floor]
            self._reference_cache[seed] = (reference, self.train_x[floor], labels, feats)
        return self._reference_cache[seed]

    @property
    def reference_size(self) -> int:
        return len(self._split(self.protocol.seeds[0])[0])

    # -- scoring ---------------------------------------------------------------------------------
    def score(self, samples: torch.Tensor, labels: torch.Tensor | None, seed: int) -> dict[str, float]:
        """Every metric of one seed's samples ((n, C, H, W) in [-1, 1] or (n, D) points) against
        that seed's reference."""
        reference, _, _, ref_feats = self._split(seed)
        samples = samples.detach().float().cpu()
        if not torch.isfinite(samples).all():
            raise ValueError("samples contain NaN or inf: the sampler diverged.")
        if self.points:
            centers = "gmm9" if self.protocol.dataset == "gmm9" else None
            return metrics.point_metrics(samples, reference, centers=centers, seed=seed)
        p, out = self.protocol, {}
        for name, judge in self.judges.items():
            fake = judge.features(samples)
            real = ref_feats[name]
            size = min(1000, len(fake), len(real))
            out[f"{name}_fd"] = metrics.classifier_fd(fake, real)
            out[f"{name}_kid"] = metrics.kid(fake, real, p.kid_subsets, size, seed=seed)[0]
            out[f"{name}_precision"], out[f"{name}_recall"] = metrics.precision_recall(
                real, fake, p.k, seed=seed)
            if labels is not None and judge.classifier is not None:
                out[f"{name}_accuracy"] = metrics.conditional_accuracy(judge.classifier, samples, labels)
        return out

    def floor_set(self, seed: int) -> tuple:
        """(images, labels or None) of one seed's floor set: n training items disjoint from its
        reference."""
        _, images, labels, _ = self._split(seed)
        return images, labels

    def summarize(self, name: str, per_seed: list[dict], info: dict) -> dict:
        """One row from per-seed metric dicts: each key's interval over the seeds, the protocol and
        the judges' digests, with `info` copied in."""
        keys = per_seed[0].keys()
        summary = {k: metrics.seed_interval([s[k] for s in per_seed]).as_dict() for k in keys}
        return {"row": name, **info, **self.protocol.as_dict(), "reference_size": self.reference_size,
                **({"judge_digests": dict(self.judge_digests)} if self.judge_digests else {}),
                "metrics": summary}

    def evaluate(self, name: str, sample_fn: Callable[[int, int], tuple], progress: bool = False,
                 **info) -> dict:
        """Score one row: ``sample_fn(seed, n) -> (samples, labels or None)`` is called once per
        seed. ``info`` (method, steps, guidance, nfe, ...) is copied into the returned row."""
        per_seed = []
        for seed in self.protocol.seeds:
            samples, labels = sample_fn(seed, self.protocol.n)
            if len(samples) != self.protocol.n:
                raise ValueError(f"sample_fn returned {len(samples)} samples, expected {self.protocol.n}.")
            per_seed.append(self.score(samples, labels, seed))
            if progress:
                print(f"  {name} seed {seed}: " + ", ".join(f"{k} {v:.4g}" for k, v in per_seed[-1].items()),
                      flush=True)
        return self.summarize(name, per_seed, info)

    def floor(self, name: str = "data") -> dict:
        """The real-vs-real row: n training images disjoint from each seed's reference."""
        per_seed = []
        for seed in self.protocol.seeds:
            per_seed.append(self.score(*self.floor_set(seed), seed))
        return self.summarize(name, per_seed, {"method": "data", "nfe": 0})


def check_same_judges(rows: list[dict], judge: str | None = None) -> None:
    """Raise ValueError if two of ``rows`` record different weights (``judge_digests``) for
    ``judge`` (default: for any judge). Rows that record none (scored before 2026-12-07) pass."""
    judges = {j for row in rows for j in row.get("judge_digests", {})} if judge is None else {judge}
    for name in sorted(judges):
        seen = {row["judge_digests"][name]: row["row"] for row in rows
                if name in row.get("judge_digests", {})}
        if len(seen) > 1:
            (a_digest, a_row), (b_digest, b_row) = list(seen.items())[:2]
            raise ValueError(f"{a_row!r} and {b_row!r} were scored by different {name!r} judges "
                             f"({a_digest} vs {b_digest}): retrained on another machine? Score both "
                             "with the same judge.")


def compare(row_a: dict, row_b: dict, key: str) -> metrics.Interval:
    """Paired 95% interval of ``row_a - row_b`` for one metric (rows of the same protocol, scored by
    the same judge: rows that record different weights for the key's judge are refused)."""
    if row_a["seeds"] != row_b["seeds"] or row_a["reference"] != row_b["reference"]:
        raise ValueError("rows compared per seed need the same seeds and reference.")
    check_same_judges([row_a, row_b], key.rsplit("_", 1)[0])  # image metrics: "<judge>_<metric>"
    return metrics.paired_difference(row_a["metrics"][key]["values"], row_b["metrics"][key]["values"])


def _columns(rows: list[dict]) -> list[tuple[str, bool]]:
    """(metric key, higher is better) in table order: per judge, the metrics of _IMAGE_METRICS."""
    keys = set(rows[0]["metrics"])
    judges = rows[0].get("judges") or []
    ordered = [f"{j}_{m}" for j in [*judges, "inception"] for m in _IMAGE_METRICS if f"{j}_{m}" in keys]
    ordered += [k for k in _POINT_METRICS if k in keys]
    ordered += sorted(keys - set(ordered))
    out = []
    for key in ordered:
        suffix = next((s for s in _IMAGE_METRICS if key.endswith("_" + s)), None)
        out.append((key, _IMAGE_METRICS[suffix] if suffix else _POINT_METRICS.get(key, False)))
    return out


def _fmt(value: float) -> str:
    a = abs(value)
    return f"{value:.3f}" if a >= 0.1 or value == 0 else f"{value:.4f}"


def format_table(rows: list[dict], metrics_shown=None) -> str:
    """Markdown table of rows of one protocol: mean +- half-width of each 95% interval.

    The best model row of each column (the floor row excluded) is in bold; ``~`` marks model rows
    whose paired difference from it is not significant (its interval contains 0). Rows that
    record different judges (``judge_digests``) raise ValueError, as in :func:`compare`.
    ``metrics_shown``: metric names to keep (e.g. ``("fd", "precision")``; default all).
    """
    if not rows:
        raise ValueError("no rows to format.")
    check_same_judges(rows)
    columns = _columns(rows)
    if metrics_shown is not None:
        columns = [(k, up) for k, up in columns if k in metrics_shown or k.split("_", 1)[-1] in metrics_shown]
    models = [r for r in rows if r.get("method") != "data"]
    best = {}
    for key, higher in columns:
        if models:
            pick = max if higher else min
            best[key] = pick(models, key=lambda r: r["metrics"][key]["mean"])
    header = ["row", "NFE", "w"] + [k.replace("_", " ") for k, _ in columns]
    lines = ["| " + " | ".join(header) + " |", "|---|---:|---:|" + "---:|" * len(columns)]
    for r in rows:
        cells = [str(r["row"]), str(r.get("nfe", "")),
                 "" if r.get("guidance") is None else f"{r['guidance']:g}"]
        for key, _ in columns:
            m = r["metrics"][key]
            text = f"{_fmt(m['mean'])} ± {_fmt((m['high'] - m['low']) / 2)}"
            if key in best and r is best[key]:
                text = f"**{text}**"
            elif key in best and r.get("method") != "data" and not compare(r, best[key], key).excludes_zero():
                text += " ~"
            cells.append(text)
        lines.append("| " + " | ".join(cells) + " |")
    p = rows[0]
    lines.append("")
    lines.append(f"{p['dataset']}: {p['n']} samples per seed x {len(p['seeds'])} seeds "
                 f"({', '.join(map(str, p['seeds']))}), reference: {p['reference']} split "
                 f"({p['reference_size']} per seed); mean ± half-width of the 95% t-interval. "
                 "Bold: best model row; ~: not significantly different from it (paired by seed).")
    return "\n".join(lines)

