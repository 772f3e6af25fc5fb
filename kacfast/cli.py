"""`kacfast` command line (also `python -m kacfast`)."""
from __future__ import annotations

import argparse
import math
import os
import sys
import time

import torch

from kacfast._device import tune_cpu_allocator
from kacfast.facts import facts_of


def _user_errors() -> tuple:
    from kacfast.checkpoints import CheckpointError
    return (ValueError, FileNotFoundError, CheckpointError)


def _time(fn, repeats: int = 5) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def cmd_demo(args) -> int:
    """The shipped MNIST models: a labelled grid from the 1-step student and the 100-step teacher."""
    import numpy as np

    import kacfast
    from kacfast.images import make_grid, save_png

    if args.threads:
        torch.set_num_threads(args.threads)
    labels = torch.arange(10 * args.rows) % 10
    grids = []
    print(f"kacfast {kacfast.__version__}: class-conditional MNIST ({args.size}x{args.size}), labels 0-9 "
          f"per row, {len(labels)} images per model, {torch.get_num_threads()} CPU thread(s)")
    for name in (f"mnist{args.size}-distillkac-1step", f"mnist{args.size}-kac-teacher"):
        model = kacfast.load_pretrained(name)
        entry = facts_of(model).pretrained
        steps, guidance = entry["steps"], entry["guidance"]
        kacfast.sample(model, steps, labels=labels[:2], guidance=guidance, seed=args.seed)  # warm-up
        start = time.perf_counter()
        images = kacfast.sample(model, steps, labels=labels, guidance=guidance, seed=args.seed)
        seconds = time.perf_counter() - start
        grids.append(make_grid(images, nrow=10))
        absorbed = entry.get("absorbed_guidance")
        how = f"guidance {absorbed:g} absorbed" if absorbed else f"guidance {guidance:g}"
        print(f"  {name:26s} {steps:>3} step(s), NFE {kacfast.nfe('euler', steps):>3}, {how + ':':23s} "
              f"{seconds:6.2f} s, {len(labels) / seconds:8.1f} images/s")
    gap = np.full((6,) + grids[0].shape[1:], 128, dtype=np.uint8)
    save_png(np.concatenate([grids[0], gap, grids[1]]), args.out)
    print(f"grid -> {args.out} (top: 1-step student; below the grey bar: 100-step teacher)")
    return 0


def cmd_noise_demo(args) -> int:
    """Kac noise and velocity at a glance: exactness, finite speed, and fused-op speed."""
    import kacfast
    from kacfast import ops
    from kacfast.formulas import kac_variance

    proc = kacfast.KacProcess(a=args.a, c=args.c)
    print(f"kacfast {kacfast.__version__}: Kac process a={proc.a}, c={proc.c}, T={proc.T}; "
          f"backend on CPU: {ops.resolve_backend(torch.device('cpu'))}")
    print("\n1) Exact Kac noise (no table): moments and atoms against the closed forms")
    print("   s     Var[X] drawn   Var[X] exact   atom mass drawn   e^{-as}     max|X|/(c s)")
    for s in (0.05, 0.25, 1.0):
        x = ops.kac_noise(torch.full((args.n,), s), proc.a, proc.c, seed=args.seed)
        atom = (x.abs() >= proc.c * s * (1 - 1e-6)).float().mean().item()
        print(f"   {s:<5} {x.var().item():<14.4f} {kac_variance(s, proc.a, proc.c):<14.4f} "
              f"{atom:<17.4f} {math.exp(-proc.a * s):<11.4f} {x.abs().max().item() / (proc.c * s):.4f}")
    print("\n2) Conditional velocity v_K(s, x): bounded by the speed c, jumps to c at the light cone")
    s = 0.5
    for frac in (0.0, 0.5, 0.9, 0.999, 1.0):
        x = torch.tensor([frac * proc.c * s])
        print(f"   x = {frac:>5} c s   v_K = {ops.kac_velocity(x, s, proc.a, proc.c).item():.4f}"
              f"   (c = {proc.c})")
    backend = ops.resolve_backend(torch.device("cpu"))
    batch = 64 if backend != "torch" else 4  # the pure-PyTorch reference is ~1000x slower
    print(f"\n3) Fused noise + flow-matching target on the '{backend}' backend, batch {batch} x "
          "3x32x32 (one read of x0, two writes)")
    x0 = torch.rand(batch, 3, 32, 32) * 2 - 1
    t = torch.rand(batch)
    sec = _time(lambda: proc.noise_target(x0, t, seed=args.seed))
    print(f"   {sec * 1e3:.2f} ms per call, {x0.numel() / sec / 1e6:.1f} M elements/s")
    print("\n4) Sampling a Kac flow whose data is a point (exact velocity): 1 vs 100 Euler steps")
    point = torch.tensor([0.5, -0.5])

    def dirac_velocity(x, t, y=None):
        return proc.velocity(x, t, point.expand_as(x))
    for steps in (1, 100):
        out = kacfast.sample(dirac_velocity, steps, shape=(2,), batch_size=1000, seed=args.seed,
                             process=proc, clamp=False)
        print(f"   {steps:>3} steps: mean distance to the point {(out - point).norm(dim=1).mean():.4f}")
    return 0


def _model_for_data(preset: str, x: torch.Tensor, num_classes, method: str, horizon: float,
                    precondition: dict | None = None):
    from kacfast.models import build_model
    # The embedding is sized for inputs of order 1 times 1000: Kac times lie in [0, T] (scale
    # 1000 / T), EDM's c_noise = log(sigma)/4 in about [-1.6, 1.1]; DDPM passes steps 0..999.
    extra = {"kac": {"time_scale": 1000.0 / horizon}, "ddpm": {"time_scale": 1.0}}.get(method, {})
    if precondition is not None:
        if preset.startswith("diffusers") or preset == "mlp":
            raise SystemExit(f"--precondition kac is built into kacfast's UNet presets, not {preset!r}.")
        extra["precondition"] = precondition
    if preset.startswith("diffusers:"):
        from kacfast.integrations.diffusers import unet_from_config_file
        return unet_from_config_file(preset[len("diffusers:"):], in_channels=x.shape[1],
                                     image_size=x.shape[-1], num_classes=num_classes, **extra)
    if preset == "mlp":
        return build_model("mlp", dim=x.shape[1], num_classes=num_classes, **extra)
    return build_model(preset, in_channels=x.shape[1], image_size=x.shape[-1],
                       num_classes=num_classes, **extra)


def _setup_worker(args) -> None:
    """Threads, and under torchrun one GPU per rank (LOCAL_RANK)."""
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device.startswith("cuda") and "LOCAL_RANK" in os.environ:
        args.device = f"cuda:{int(os.environ['LOCAL_RANK'])}"
        torch.cuda.set_device(args.device)


def cmd_train(args) -> int:
    """Train a Kac teacher (or an EDM / DDPM baseline) on a dataset; resumable."""
    from kacfast.data import load_dataset
    from kacfast.process import KacProcess
    from kacfast.training import TrainConfig, train
    from kacfast.training.objectives import DDPMObjective, EDMObjective, KacObjective

    if args.time_distribution != "uniform" and args.method != "kac":
        raise SystemExit(f"--time-distribution is the Kac teacher's setting; --method {args.method} "
                         "draws its own noise levels.")
    if args.prediction != "epsilon" and args.method != "ddpm":
        raise SystemExit(f"--prediction is the DDPM baseline's setting; --method {args.method} has its "
                         "own parametrization.")
    for flag, value in (("--precondition", args.precondition), ("--loss-weighting", args.loss_weighting)):
        if value != "none" and args.method != "kac":
            raise SystemExit(f"{flag} {value} scales by the Kac marginal; --method {args.method} has "
                             "its own parametrization.")
    _setup_worker(args)
    x, y = load_dataset(args.data, split="train", seed=args.seed)
    num_classes = int(y.max()) + 1 if args.conditional else None
    torch.manual_seed(args.seed)
    process = KacProcess(a=args.a, c=args.c, T=args.T, clock=args.clock)
    rms_data = None
    if args.precondition == "kac" or args.loss_weighting == "target":
        # the data's rms per coordinate (what E[x_t^2] and E[u^2] need of it), chunk by chunk in
        # float64 (no float64 copy of a large dataset)
        total = sum(chunk.double().square().sum().item() for chunk in x.split(4096))
        rms_data = round(math.sqrt(total / x.numel()), 6)
    precondition = None
    if args.precondition == "kac":
        precondition = {**{k: v for k, v in process.to_dict().items() if k != "eps"}, "rms_data": rms_data}
    model = _model_for_data(args.model, x, num_classes, args.method, args.T,
                            precondition=precondition).to(args.device)
    objective = {"kac": lambda: KacObjective(process, time_distribution=args.time_distribution,
                                             loss_weighting=args.loss_weighting, rms_data=rms_data),
                 "edm": EDMObjective, "ddpm": lambda: DDPMObjective(args.prediction)}[args.method]()
    config = TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                         warmup=args.warmup, lr_schedule=args.lr_schedule,
                         ema_decay=args.ema_decay, ema_lengths=args.ema_lengths,
                         label_dropout=args.label_dropout if num_classes else 0.0,
                         seed=args.seed, ckpt_every=args.ckpt_every, sample_every=args.sample_every,
                         precision=args.precision, compile=args.compile,
                         channels_last=args.channels_last)
    start = time.perf_counter()
    train(model, objective, (x, y if num_classes else None), config, args.out, resume=args.resume,
          run_info={"data": args.data, "preset": args.model}, progress=not args.quiet)
    print(f"trained to step {args.steps} in {time.perf_counter() - start:.1f} s -> {args.out}")
    return 0


def cmd_distill(args) -> int:
    """Endpoint-only multi-stage distillation of a trained Kac teacher (DistillKac)."""
    from kacfast.data import load_dataset
    from kacfast.training.distill import DistillConfig, distill
    from kacfast.checkpoints import load_trained, trained_on

    _setup_worker(args)
    teacher_path = _checkpoint(args.teacher)
    teacher, meta = load_trained(teacher_path, device=args.device)
    process = facts_of(teacher).process
    if process is None:
        raise ValueError(f"{args.teacher} is not a Kac teacher (method {meta['objective'].get('method')!r}).")
    data = trained_on(meta, args.teacher)
    x, y = load_dataset(data, split="train", seed=args.seed)
    per_stage = args.steps_per_stage[0] if len(args.steps_per_stage) == 1 else tuple(args.steps_per_stage)
    options = dict(args.objective_option)
    if len(options) < len(args.objective_option):
        raise ValueError("--objective-option names an option twice.")
    config = DistillConfig(schedule=tuple(args.schedule), steps_per_stage=per_stage,
                           batch_size=args.batch_size, lr=args.lr, warmup=args.warmup,
                           lr_schedule=args.lr_schedule, guidance=args.guidance, start=args.start,
                           teacher_solver=args.teacher_solver,
                           objective=args.objective, objective_options=options,
                           seed=args.seed, ema_lengths=args.ema_lengths,
                           ckpt_every=args.ckpt_every, sample_every=args.sample_every,
                           precision=args.precision, compile=args.compile,
                           channels_last=args.channels_last)
    start = time.perf_counter()
    distill(teacher, process, (x, y if teacher.num_classes is not None else None), config, args.out,
            resume=args.resume, progress=not args.quiet,
            run_info={"data": data, "teacher": os.path.abspath(teacher_path)})
    last = os.path.join(args.out, f"stage-{len(args.schedule) - 1}-{args.schedule[-1]}")
    print(f"distilled {' -> '.join(map(str, args.schedule))} in {time.perf_counter() - start:.1f} s; "
          f"student: {last}")
    return 0


def _checkpoint(value: str) -> str:
    """A run directory, a checkpoint file or a shipped model's name -> a path load_trained reads."""
    from kacfast.pretrained import PRETRAINED, pretrained_path
    if os.path.exists(value):
        return value
    if value in PRETRAINED:
        return pretrained_path(value)
    raise ValueError(f"--ckpt {value!r} is neither a run directory, a checkpoint file nor a shipped "
                     f"model ({', '.join(sorted(PRETRAINED))}).")


def _load(args):
    """(model, meta) of --ckpt, with the sampling flags checked before any work and --steps
    defaulting to the model's own (a student's grid, else 100)."""
    from kacfast._device import compile_mode, network_dtype
    from kacfast.checkpoints import load_trained

    if args.n < 1:
        raise ValueError(f"--n must be >= 1, got {args.n}.")
    if args.batch_size is not None and args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}.")
    network_dtype(args.dtype, torch.device(args.device))
    compile_mode(args.compile)
    model, meta = load_trained(_checkpoint(args.ckpt), device=args.device)
    if args.steps is None:
        grid = facts_of(model).grid
        args.steps = len(grid) - 1 if grid else 100
    return model, meta


def _batch_size(model, args, guided: bool) -> int:
    """--batch-size, else the device's chunk size for a guided or an unguided request."""
    from kacfast.sampling import default_max_batch
    return args.batch_size or default_max_batch(torch.device(args.device), math.prod(model.sample_shape),
                                                guided)


def _generate(model, meta, args, labels, n, batch):
    """Yields (first index, samples) of a checkpoint in batches of `batch`, with the sampler its
    training method calls for. Batch k draws from seed + k * 1_000_003, so nearby --seed values
    share no batch (and a different batch size draws different samples)."""
    from kacfast.generate import generate, solver_for

    method = meta.get("objective", {}).get("method", "kac")
    args.solver = solver_for(method, args.solver)
    for k, first in enumerate(range(0, n, batch)):
        size = min(batch, n - first)
        part = None if labels is None else labels[first:first + size].to(args.device)
        yield first, generate(model, method, args.steps, solver=args.solver, labels=part, n=size,
                              guidance=args.guidance, seed=args.seed + k * 1_000_003,
                              dtype=args.dtype, compile=args.compile or False,
                              max_batch=batch if args.compile else None).cpu()


def _labels(args, model, n):
    if getattr(model, "num_classes", None) is None:
        if args.labels:
            raise ValueError("--labels was given but the model is unconditional.")
        return None
    if args.labels:
        picked = torch.tensor(args.labels, dtype=torch.long)
        return picked.repeat((n + len(picked) - 1) // len(picked))[:n]
    return torch.arange(n) % model.num_classes


def cmd_export(args) -> int:
    """Write a sampling-only copy of a run (EMA weights + metadata, no optimizer state), or with
    --format diffusers a KacPipeline folder with a model card."""
    weights = args.average or not args.raw
    if args.format == "diffusers":
        from kacfast.integrations.diffusers import export_pipeline
        _checkpoint(args.ckpt)  # the same one-line error for a path that is not there
        export_pipeline(args.ckpt, args.out, ema=weights)
        print(f"{args.ckpt} -> {args.out} (KacPipeline.from_pretrained({args.out!r}))")
        return 0
    from kacfast.checkpoints import export_weights
    meta = export_weights(_checkpoint(args.ckpt), args.out, ema=weights)
    size = os.path.getsize(args.out) / 2**20
    print(f"{args.ckpt} (step {meta['exported']['from_step']}) -> {args.out} ({size:.2f} MiB)")
    return 0


def cmd_sample(args) -> int:
    """Sample a checkpoint (run folder or shipped name) to .npz (uint8 images + labels, streamed:
    memory independent of --n), .npy (float32 in [-1, 1]) or a .png grid; written atomically."""
    from tqdm.auto import tqdm

    from kacfast.sample_files import SampleWriter

    model, meta = _load(args)
    labels = _labels(args, model, args.n)
    writer = SampleWriter(args.out, args.n, model.sample_shape, nrow=args.nrow)  # checks --out first
    start = time.perf_counter()
    with writer, tqdm(total=args.n, unit="img", desc="kacfast sample", disable=args.quiet) as bar:
        for first, images in _generate(model, meta, args, labels, args.n,
                                       _batch_size(model, args, args.guidance != 1)):
            writer.write(images, None if labels is None else labels[first:first + len(images)])
            bar.update(len(images))
    elapsed = time.perf_counter() - start
    print(f"{args.n} samples, {args.steps} steps, {args.n / elapsed:.1f} samples/s -> {args.out}")
    return 0


def cmd_eval(args) -> int:
    """Score a checkpoint under the quality protocol: per guidance, --n samples per seed, every judge's
    FD / KID / precision / recall / accuracy (2-D data: energy distance, sliced W2) with 95%
    intervals over --seeds, next to the real-vs-real floor row."""
    import copy
    import json

    from kacfast.checkpoints import trained_on
    from kacfast.evaluation import Evaluator, Protocol, format_table
    from kacfast.generate import generation_nfe, solver_for

    args.n = args.n if args.n is not None else 2000
    model, meta = _load(args)
    protocol = Protocol(trained_on(meta, args.ckpt), n=args.n, seeds=tuple(args.seeds),
                        reference=args.reference, judges=tuple(args.judges))
    evaluator = Evaluator(protocol, judge_steps=args.classifier_steps,
                          inception_weights=args.inception_weights)
    labels = _labels(args, model, args.n)
    method = meta.get("objective", {}).get("method", "kac")
    args.solver = solver_for(method, args.solver)  # recorded in every row, so resolved up front
    nfe = generation_nfe(method, args.steps, args.solver)
    name = os.path.basename(os.path.normpath(args.ckpt))

    def emit(row):
        if args.format == "json":
            print(json.dumps(row, sort_keys=True), flush=True)

    # one batch size for every row, so the rows of one seed share their prior / latent draws
    batch = _batch_size(model, args, any(w != 1 for w in args.guidance))
    rows = [evaluator.floor()]
    emit(rows[0])
    for w in args.guidance:
        run = copy.copy(args)
        run.guidance = w

        def sample_fn(seed, n, run=run):
            run.seed = seed
            images = torch.cat([part for _, part in _generate(model, meta, run, labels, n, batch)])
            return images, labels

        rows.append(evaluator.evaluate(f"{name}, {args.steps} steps, w={w:g}", sample_fn,
                                       progress=not args.quiet, method=method, steps=args.steps,
                                       solver=args.solver, guidance=w, nfe=nfe))
        emit(rows[-1])
    if args.format == "table":
        print(format_table(rows))
    return 0


def _add_sampling_args(p, sweep: bool = False) -> None:
    """The flags of commands that sample a checkpoint; ``sweep`` (eval): several --guidance values
    and --seeds instead of one --seed."""
    p.add_argument("--ckpt", required=True,
                   help="run directory, checkpoint file or shipped model (kacfast.list_pretrained())")
    p.add_argument("--steps", type=int, default=None,
                   help="integration steps (default: a distilled student's own, else 100)")
    from kacfast.generate import solvers_for
    p.add_argument("--solver", default=None,
                   help="; ".join(f"{m}: {', '.join(solvers_for(m))}" for m in ("kac", "edm", "ddpm"))
                   + " (the first is the default)")
    if sweep:
        p.add_argument("--guidance", type=float, nargs="+", default=[1.0],
                       help="guidance strengths w, one row each (default 1)")
        p.add_argument("--n", type=int, default=None, help="samples per seed and row (default 2000)")
        p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2],
                       help="independent seeds, >= 2 (default 0 1 2)")
    else:
        p.add_argument("--guidance", type=float, default=1.0, help="guidance strength w (default 1)")
        p.add_argument("--n", type=int, default=100, help="number of samples (default 100)")
        p.add_argument("--seed", type=int, default=0,
                       help="batch k draws from seed + 1,000,003 k, so the samples depend on "
                            "--batch-size too (default 0)")
    p.add_argument("--labels", type=int, nargs="*", help="classes to sample (cycled over --n)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="samples per batch (default: the device's chunk size; on a CPU 128 at "
                        "16x16, half that when guided; eval: one size for all its --guidance "
                        "values, so a row's samples depend on the other values given)")
    p.add_argument("--dtype", default=None, help="network autocast dtype: bf16 or fp16 (Kac models; "
                   "default float32)")
    p.add_argument("--compile", nargs="?", const="default", default=False, metavar="MODE",
                   help="compile the sampler once (torch.compile MODE, default 'default'; on CUDA "
                        "with CUDA graphs); worth it for large --n")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _name_value(text: str) -> tuple[str, float]:
    """argparse type of NAME=VALUE (a number): (name, value)."""
    name, sep, value = text.partition("=")
    try:
        if not (sep and name):
            raise ValueError
        return name, float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected NAME=NUMBER, got {text!r}") from None


def _add_ema_lengths_arg(p) -> None:
    p.add_argument("--ema-lengths", type=float, nargs="+", default=(), metavar="SIGMA_REL",
                   help="also keep power-function EMAs of these relative lengths (each in (0, "
                        "0.289), e.g. 0.05 0.1; saved as powerSIGMA_REL, see `export --average`)")


def _add_lr_schedule_arg(p) -> None:
    from kacfast.training.loop import LR_SCHEDULES
    p.add_argument("--lr-schedule", choices=LR_SCHEDULES, default="constant",
                   help="after the warm-up: constant (default) or cosine (half a cosine towards 0 "
                        "at the last step; per stage in distill; the run's optimizer only, not a "
                        "discriminator's)")


def _add_execution_args(p) -> None:
    """train's and distill's ExecutionConfig flags (distill applies them to every stage)."""
    from kacfast._device import COMPILE_MODES
    from kacfast.training.loop import PRECISIONS
    p.add_argument("--precision", choices=PRECISIONS, default="auto",
                   help="auto: bf16 autocast on CUDA, float32 on CPU (default); bf16: autocast "
                        "forward and loss on any device; fp32")
    p.add_argument("--compile", nargs="?", const="default", default=False, metavar="MODE",
                   choices=COMPILE_MODES,
                   help=f"torch.compile the trained network's forward (MODE: {', '.join(COMPILE_MODES)}; "
                        "default: eager)")
    p.add_argument("--channels-last", action="store_true",
                   help="model and batches in channels_last memory format (image data only)")


def main(argv=None) -> int:
    from kacfast.baselines import PREDICTIONS
    from kacfast.evaluation import REFERENCES
    from kacfast.metrics import JUDGES
    from kacfast.data import dataset_names
    from kacfast.models import PRESETS
    from kacfast.sampling import one_call_solvers
    from kacfast.training.distill_objectives import DISTILL_OBJECTIVES
    from kacfast.training.objectives import LOSS_WEIGHTINGS, TIME_DISTRIBUTIONS

    parser = argparse.ArgumentParser(prog="kacfast", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true",
                        help="show the full traceback of an error instead of one line")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help=cmd_demo.__doc__)
    demo.add_argument("--out", default="kacfast_demo.png", help="PNG grid (default kacfast_demo.png)")
    demo.add_argument("--rows", type=int, default=2, help="rows of 10 labelled images per model (default 2)")
    demo.add_argument("--size", type=int, choices=(16, 28), default=28,
                      help="the shipped pair to run: 28x28 (default) or 16x16 digits")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's)")
    demo.set_defaults(func=cmd_demo)
    noise = sub.add_parser("noise-demo", help=cmd_noise_demo.__doc__)
    noise.add_argument("--a", type=float, default=9.0, help="switching rate (default 9)")
    noise.add_argument("--c", type=float, default=3.0, help="speed (default 3)")
    noise.add_argument("--n", type=int, default=200_000, help="noise samples per time (default 2e5)")
    noise.add_argument("--seed", type=int, default=0)
    noise.set_defaults(func=cmd_noise_demo)
    ex = sub.add_parser("export", help=cmd_export.__doc__)
    ex.add_argument("--ckpt", required=True, help="run directory, checkpoint file or shipped model")
    ex.add_argument("--out", required=True,
                    help="output .safetensors (--format kacfast) or folder (--format diffusers)")
    ex.add_argument("--format", choices=("kacfast", "diffusers"), default="kacfast",
                    help="kacfast: one safetensors file (default); diffusers: a KacPipeline folder "
                         "(needs kacfast[diffusers])")
    weights = ex.add_mutually_exclusive_group()
    weights.add_argument("--raw", action="store_true", help="export the raw weights instead of the EMA")
    weights.add_argument("--average", metavar="NAME",
                         help="export a power-function EMA of a run trained with --ema-lengths "
                              "(e.g. power0.1) instead of its EMA")
    ex.set_defaults(func=cmd_export)

    tr = sub.add_parser("train", help=cmd_train.__doc__)
    tr.add_argument("--data", required=True, help=", ".join(dataset_names()))
    tr.add_argument("--model", required=True,
                    help=f"a preset ({', '.join(PRESETS)}) or diffusers:CONFIG.json (a UNet2DModel "
                         "config; needs kacfast[diffusers])")
    tr.add_argument("--steps", type=int, required=True)
    tr.add_argument("--out", required=True, help="run directory")
    tr.add_argument("--resume", action="store_true", help="continue from --out's checkpoint")
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--method", choices=("kac", "edm", "ddpm"), default="kac")
    tr.add_argument("--batch-size", type=int, default=128, help="global batch (default 128)")
    tr.add_argument("--lr", type=float, default=2e-4)
    tr.add_argument("--warmup", type=int, default=200)
    _add_lr_schedule_arg(tr)
    tr.add_argument("--ema-decay", type=float, default=0.999)
    _add_ema_lengths_arg(tr)
    tr.add_argument("--label-dropout", type=float, default=0.1)
    tr.add_argument("--unconditional", dest="conditional", action="store_false")
    tr.add_argument("--ckpt-every", type=int, default=500)
    tr.add_argument("--sample-every", type=int, default=1000,
                    help="write OUT/samples/step-N.png every N steps (images; 0 = never; default 1000)")
    tr.add_argument("--a", type=float, default=9.0, help="Kac rate (default 9)")
    tr.add_argument("--c", type=float, default=3.0, help="Kac speed (default 3)")
    tr.add_argument("--T", type=float, default=1.0, help="horizon (default 1)")
    tr.add_argument("--clock", choices=("t", "t2"), default="t")
    tr.add_argument("--time-distribution", choices=list(TIME_DISTRIBUTIONS), default="uniform",
                    help="how the Kac teacher draws training times (default uniform on [0, T]; "
                         "logit-normal: T * sigmoid(N(0, 1)))")
    tr.add_argument("--precondition", choices=["none", "kac"], default="none",
                    help="kac: the UNet sees c_in(t) x_t and scales its output by c_out(t), input "
                         "and target at unit mean square for every t (from the Kac marginal and the "
                         "data's rms); default none")
    tr.add_argument("--loss-weighting", choices=list(LOSS_WEIGHTINGS), default="none",
                    help="target: each sample's squared error divided by E[u^2 | t], the target's "
                         "mean square at its t (from the Kac marginal and the data's rms); default none")
    tr.add_argument("--prediction", choices=list(PREDICTIONS), default="epsilon",
                    help="what a DDPM baseline's network predicts: epsilon (default, Ho et al.) or "
                         "v_prediction (Salimans & Ho: its x0 estimate stays bounded at high noise)")
    tr.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    tr.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's)")
    tr.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_execution_args(tr)
    tr.set_defaults(func=cmd_train)

    di = sub.add_parser("distill", help=cmd_distill.__doc__)
    di.add_argument("--teacher", required=True,
                    help="run directory of a trained Kac teacher, or a shipped teacher's name")
    di.add_argument("--out", required=True, help="output directory (one subdirectory per stage)")
    di.add_argument("--schedule", type=int, nargs="+", default=[100, 20, 4, 2, 1],
                    help="step counts, each dividing the previous (default 100 20 4 2 1)")
    di.add_argument("--steps-per-stage", type=int, nargs="+", default=[1000],
                    help="optimisation steps of every stage, or one count per stage (default 1000)")
    di.add_argument("--batch-size", type=int, default=128)
    di.add_argument("--lr", type=float, default=1e-4)
    di.add_argument("--warmup", type=int, default=100, help="LR warm-up steps per stage (default 100)")
    _add_lr_schedule_arg(di)
    di.add_argument("--guidance", type=float, default=1.0, help="teacher guidance in stage 1")
    di.add_argument("--start", choices=("noise", "rollout"), default="noise",
                    help="interval start points: forward-noised data or teacher roll-outs")
    di.add_argument("--objective", choices=list(DISTILL_OBJECTIVES), default="endpoint-l2",
                    help="distillation loss (default endpoint-l2: the paper's)")
    di.add_argument("--objective-option", type=_name_value, action="append", default=[],
                    metavar="NAME=VALUE",
                    help="one of the objective's settings, e.g. adversarial_weight=0.3 (repeatable)")
    di.add_argument("--teacher-solver", choices=one_call_solvers(), default="euler",
                    help="how the teacher is integrated over each interval (default euler)")
    di.add_argument("--ckpt-every", type=int, default=500)
    di.add_argument("--sample-every", type=int, default=1000,
                    help="preview grid every N steps of each stage (images; 0 = never; default 1000)")
    di.add_argument("--resume", action="store_true")
    di.add_argument("--seed", type=int, default=0)
    _add_ema_lengths_arg(di)
    di.add_argument("--threads", type=int, default=0)
    di.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    di.add_argument("--quiet", action="store_true")
    _add_execution_args(di)
    di.set_defaults(func=cmd_distill)

    sa = sub.add_parser("sample", help=cmd_sample.__doc__)
    _add_sampling_args(sa)
    sa.add_argument("--out", required=True,
                    help="FILE.npz (uint8 images + labels), FILE.npy (float32) or FILE.png (grid)")
    sa.add_argument("--nrow", type=int, default=10, help="images per grid row (default 10)")
    sa.set_defaults(func=cmd_sample)

    ev = sub.add_parser("eval", help=cmd_eval.__doc__)
    _add_sampling_args(ev, sweep=True)
    ev.add_argument("--reference", choices=REFERENCES, default="train",
                    help="train (default): each seed's reference is a random part of the training "
                         "split, disjoint from the floor row's images; test: the held-out split")
    ev.add_argument("--judges", nargs="+", default=list(JUDGES), choices=list(JUDGES),
                    help=f"feature spaces (default: {' '.join(JUDGES)})")
    ev.add_argument("--format", choices=("table", "json"), default="table",
                    help="a markdown table (default) or one JSON object per row")
    ev.add_argument("--classifier-steps", type=int, default=None,
                    help="training steps of each judge (default: the dataset's)")
    ev.add_argument("--inception-weights", default=None,
                    help="local Inception weights file: adds the real FID (needs kacfast[fid])")
    ev.set_defaults(func=cmd_eval)
    args = parser.parse_args(argv)
    tune_cpu_allocator()  # this process is ours: repeated network calls stop page-faulting
    try:
        if args.debug:
            return args.func(args)
        try:
            return args.func(args)
        except _user_errors() as err:
            # a user's mistake (a path, a name, a value): one line, as argparse reports its own errors
            print(f"kacfast {args.command}: error: {err}", file=sys.stderr)
            return 2
    finally:
        from kacfast.training import close_distributed  # train/distill open one under torchrun
        close_distributed()


if __name__ == "__main__":
    sys.exit(main())
