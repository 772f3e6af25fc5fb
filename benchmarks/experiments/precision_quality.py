"""Does a bf16 network move sample quality? The shipped student sampled in float32 and with a bf16
network (same seeds, same labels), scored with the project's classifier, beside the float32
seed-to-seed spread (the metric's noise at this sample size).

    python benchmarks/experiments/precision_quality.py [--model mnist16-distillkac-1step] [--n 2000] [--seeds 5]
        [--compile]    # the bf16 samples from the compiled sampler (float32 stays eager)

Prints one JSON object: per precision the classifier FD / KID / conditional accuracy of each seed
against the training split (held-out split with --reference test), their mean and standard
deviation, and the paired bf16 - float32 difference per seed with its mean and standard error.
"""
from __future__ import annotations

import argparse
import json
import statistics

import torch

import kacfast
from kacfast import metrics
from kacfast.data import load_dataset
from kacfast.facts import facts_of

METRICS = ("classifier_fd", "classifier_kid", "conditional_accuracy")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mnist16-distillkac-1step")
    parser.add_argument("--data", default="mnist5k16")
    parser.add_argument("--n", type=int, default=2000, help="samples per seed (default 2000)")
    parser.add_argument("--seeds", type=int, default=5, help="sample seeds (default 5)")
    parser.add_argument("--reference", choices=("train", "test"), default="train")
    parser.add_argument("--compile", action="store_true",
                        help="sample the bf16 rows with the compiled sampler (compile=True)")
    args = parser.parse_args()
    if args.seeds < 2 or args.n < 1:
        parser.error("--seeds must be >= 2 (the spread needs two) and --n >= 1.")

    model = kacfast.load_pretrained(args.model)
    steps = facts_of(model).pretrained["steps"]
    guidance = facts_of(model).pretrained["guidance"]
    classifier = metrics.train_classifier(args.data)
    reference, _ = load_dataset(args.data, split=args.reference, seed=1)
    labels = torch.arange(args.n) % model.num_classes
    scores = {"float32": [], "bf16": []}
    for seed in range(args.seeds):
        for name, dtype in (("float32", None), ("bf16", torch.bfloat16)):
            images = kacfast.sample(model, steps, labels=labels, guidance=guidance, seed=seed,
                                    dtype=dtype, compile=args.compile and dtype is not None)
            scores[name].append(metrics.image_metrics(classifier, images, reference, labels))
    out = {"model": args.model, "n": args.n, "seeds": args.seeds, "reference": args.reference,
           "num_reference": len(reference), "cpu": kacfast._device.cpu_description(),
           "cpu_bf16": kacfast._device.cpu_has_bf16(), "bf16_compiled": args.compile}
    for key in METRICS:
        row = {name: [s[key] for s in runs] for name, runs in scores.items()}
        diffs = [b - f for b, f in zip(row["bf16"], row["float32"])]
        out[key] = {**row, **{f"{name}_mean": statistics.mean(v) for name, v in row.items()},
                    **{f"{name}_std": statistics.stdev(v) for name, v in row.items()},
                    "paired_diff_mean": statistics.mean(diffs),
                    "paired_diff_stderr": statistics.stdev(diffs) / len(diffs) ** 0.5}
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
