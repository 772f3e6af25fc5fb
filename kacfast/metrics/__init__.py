"""Offline quality metrics.

Images (no network, no Inception weights needed):
    * :class:`Classifier` / :func:`train_classifier`: a small CNN trained in the project on the same
      data, cached to disk (safetensors + JSON config). Its penultimate layer
      (:func:`classifier_features`) is the feature space of the next two metrics.
    * :func:`classifier_fd`: "classifier FD", the Frechet distance between Gaussian fits of
      classifier features. It is **not** FID: its values are not comparable with Inception FID.
    * :func:`kid`: "classifier KID", the unbiased polynomial-kernel MMD^2 of Binkowski et al. on
      the same features (not the Inception KID either).
    * :func:`conditional_accuracy`: classifier accuracy on class-conditional samples.
    * :func:`image_metrics`: all of the above in one dict.
    * :func:`inception_fid`: the real FID, opt-in: needs torch-fidelity (``pip install
      'kacfast[fid]'``) and a local Inception weights file; nothing is downloaded.

2-D point sets (exact, no learned features): :func:`energy_distance`, :func:`sliced_w2`,
:func:`mode_coverage`, and :func:`point_metrics` for all of them.

Every statistic is computed in float64 and returned as Python floats.

Modules: :mod:`~kacfast.metrics.classifier` (the judges), :mod:`~kacfast.metrics.distances`
(FD, KID, precision / recall), :mod:`~kacfast.metrics.points` (2-D), :mod:`~kacfast.metrics.inception`,
:mod:`~kacfast.metrics.intervals` (confidence intervals over seeds).
"""
from kacfast.metrics.classifier import (JUDGES, Classifier, classifier_features,
                                        conditional_accuracy, evaluate_classifier, load_classifier,
                                        load_judges, train_classifier)
from kacfast.metrics.distances import (classifier_fd, frechet_distance, gaussian_stats, image_metrics, kid,
                                       precision_recall, sqrtm_psd, trace_sqrtm_product)
from kacfast.metrics.inception import inception_features, inception_fid
from kacfast.metrics.intervals import Interval, paired_difference, seed_interval, t_quantile
from kacfast.metrics.points import energy_distance, mode_coverage, point_metrics, sliced_w2

__all__ = [
    "Classifier", "train_classifier", "load_classifier", "classifier_features", "evaluate_classifier",
    "JUDGES", "load_judges", "gaussian_stats", "frechet_distance", "classifier_fd", "sqrtm_psd",
    "trace_sqrtm_product", "kid", "precision_recall", "conditional_accuracy", "image_metrics",
    "energy_distance", "sliced_w2", "mode_coverage", "point_metrics", "inception_fid",
    "inception_features", "Interval", "seed_interval",
    "paired_difference", "t_quantile",
]
