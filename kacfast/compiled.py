"""Compiled samplers: the network compiled once per batch shape, the sampler replayed per call.

`compile_sampler(model, steps, batch_size=...)` returns a `Sampler` for one (model, batch, shape,
grid, solver, guidance, dtype, device). What is compiled is the network call: one graph per input
shape, whatever the number of steps (compiling the unrolled step loop would put `steps` copies of
the network in one graph and its compile time would grow with them); the fused steps between network
calls are already one kernel each. On the CPU the weights are frozen into the graph (inductor's
freezing: constants folded, convolution weights prepacked for oneDNN), so an in-place weight update
needs a new compile (not for a bf16 / fp16 network where inductor's 512-bit kernels miscompile it:
see kacfast._device.wide_kernels_miscompile), and in a float32 graph every GroupNorm (with the SiLU
after it) runs kacfast's C++ kernel (`FuseGroupNorm`). Every build checks one compiled network call
against the eager one. On CUDA the whole sampler is then captured as CUDA graphs with static
buffers: one draws the prior from a device tensor [seed, offset] (so a new seed replays the same
graph), one runs every network call and fused step; a call replays both and returns a copy of the
static output. Samplers put the model in eval mode while they build and run.

`kacfast.sample(..., compile=...)` reuses Samplers through `cached_sampler` (the last
`CACHE_SIZE` requests; torch.compile's own cache lets a new Sampler of an already compiled network
and shape skip the compile).
"""
from __future__ import annotations

import collections
import contextlib
import inspect
import time
import weakref
from typing import Callable

import torch
import torch.nn.functional as F
from torch._inductor.custom_graph_pass import CustomGraphPass, get_hash_for_files

from kacfast._device import compile_mode, wide_kernels_miscompile
from kacfast.ops import _check_seed, _ext, _fake, group_norm_kernel_runs
from kacfast.sampling import (SamplingPlan, _as_labels, draw_seed, eval_mode, guided_velocity_fn,
                              plan_sampling, run_plan)

__all__ = ["Sampler", "compile_sampler", "cached_sampler", "FuseGroupNorm", "CACHE_SIZE",
           "RECOMPILE_LIMIT", "FUSE_GROUP_NORM"]

# With CUDA graphs captured here, inductor must not capture its own: map modes to their
# no-cudagraph equivalent.
_NO_INDUCTOR_GRAPHS = {"reduce-overhead": "default", "max-autotune": "max-autotune-no-cudagraphs"}

#: Compiled graphs allowed per network class (torch.compile's recompile_limit, 8 by default).
RECOMPILE_LIMIT = 64
#: Float32 CPU samplers run GroupNorm (+ SiLU) as kacfast's C++ kernel (`FuseGroupNorm`); False
#: leaves it to inductor (for comparisons: benchmarks/experiments/fused_group_norm.py).
FUSE_GROUP_NORM = True
#: Samplers kept by `cached_sampler` (each holds its model and, on CUDA, its graphs' memory).
CACHE_SIZE = 8
_CACHE: "collections.OrderedDict[tuple, Sampler]" = collections.OrderedDict()
# The weights each model had when a graph froze them (values only: no reference to the model).
_FROZEN_AT: "weakref.WeakKeyDictionary[object, tuple]" = weakref.WeakKeyDictionary()


def _weights_state(modules: list, frozen: bool) -> tuple:
    """What a compiled sampler depends on, over the model's `modules` (list(model.modules())):
    which parameter and buffer tensors it holds and where their data lives (a captured CUDA
    graph reads them there, so it sees in-place updates but not replaced tensors) and, when the
    weights are frozen into the graph as constants (CPU), their version counters too (any
    in-place update: an optimizer step, load_state_dict). Walks no module tree: microseconds."""
    return tuple((id(t), t.data_ptr(), t._version if frozen else 0) for m in modules
                 for t in (*m._parameters.values(), *m._buffers.values()) if t is not None)


class FuseGroupNorm(CustomGraphPass):
    """Inductor pre-grad pass for float32 CPU inference graphs: each F.group_norm of a
    float32 CPU tensor, with the F.silu that is its only user, becomes one kacfast::group_norm
    call (C++, either layout; see csrc/cpu/group_norm_cpu.cpp). Inductor's own CPU code for these
    runs up to 3x slower in the channels-last layout that frozen convolutions use (torch 2.13;
    benchmarks/experiments/fused_group_norm.py)."""

    _SIGNATURE = inspect.signature(F.group_norm)

    def __call__(self, graph: torch.fx.Graph) -> None:
        for node in list(graph.nodes):
            if node.op != "call_function" or node.target is not F.group_norm:
                continue
            args = self._SIGNATURE.bind(*node.args, **node.kwargs)
            args.apply_defaults()
            x = args.arguments["input"]
            value = x.meta.get("example_value") if isinstance(x, torch.fx.Node) else None
            if (value is None or value.dtype != torch.float32 or value.dim() < 2
                    or value.device.type != "cpu" or self._needs_grad(args.arguments)):
                continue
            users = list(node.users)
            silu = (len(users) == 1 and users[0].op == "call_function" and users[0].target is F.silu
                    and users[0].args == (node,) and not users[0].kwargs.get("inplace", False))
            replaced = users[0] if silu else node
            with graph.inserting_before(replaced):
                fused = graph.call_function(torch.ops.kacfast.group_norm.default, (
                    x, args.arguments["weight"], args.arguments["bias"],
                    args.arguments["num_groups"], float(args.arguments["eps"]), silu))
            fused.meta.update(replaced.meta)
            replaced.replace_all_uses_with(fused)
            if silu:
                graph.erase_node(replaced)
            graph.erase_node(node)

    @staticmethod
    def _needs_grad(arguments: dict) -> bool:
        """The kernel has no backward: a graph traced with grad enabled keeps torch's GroupNorm
        wherever the input or the affine parameters require grad."""
        values = [a.meta.get("example_value") for a in (arguments["input"], arguments["weight"],
                                                         arguments["bias"]) if isinstance(a, torch.fx.Node)]
        return torch.is_grad_enabled() and any(getattr(v, "requires_grad", False) for v in values)

    def uuid(self) -> bytes:
        # what the rewritten graph depends on: this pass, the fake kernel's layout rule and the
        # built kernel with its schema
        files = [__file__, _fake.__file__] + ([_ext.library_path()] if _ext.available() else [])
        return get_hash_for_files(tuple(files))


def _freezes(plan: SamplingPlan) -> bool:
    """Whether a Sampler of `plan` freezes the weights into its graph (CPU; see the module doc)."""
    return plan.device.type != "cuda" and not wide_kernels_miscompile(plan.device, plan.dtype)


def fuses_group_norm(plan: SamplingPlan) -> bool:
    """Whether a Sampler of `plan` runs its GroupNorms as kacfast's kernel (`FuseGroupNorm`): a
    frozen float32 graph on a device where the kernel runs, with FUSE_GROUP_NORM on."""
    return (FUSE_GROUP_NORM and _freezes(plan) and plan.dtype is None
            and group_norm_kernel_runs(plan.device))


class Sampler:
    """A sampler compiled for one batch: `sampler(labels=None, seed=None) -> (batch_size, *shape)`.

    Build it with `compile_sampler`. Attributes: `batch_size`, `plan` (the validated request),
    `cuda_graph`, `frozen` (CPU: weights frozen into the graph), `fused_group_norm` (CPU float32:
    GroupNorms run kacfast's kernel, see `FuseGroupNorm`), `compile_seconds` (what the build cost:
    compile, warm-up and capture).
    """

    def __init__(self, model: Callable, plan: SamplingPlan, mode: str = "default",
                 cuda_graph: bool | None = None):
        on_cuda = plan.device.type == "cuda"
        self.cuda_graph = on_cuda if cuda_graph is None else bool(cuda_graph)
        if self.cuda_graph and not on_cuda:
            raise ValueError(f"cuda_graph=True needs a CUDA device, got {plan.device}.")
        self.model, self.plan, self.batch_size = model, plan, plan.batch
        self.frozen = _freezes(plan)
        self.fused_group_norm = fuses_group_norm(plan)
        self._modules = list(model.modules()) if isinstance(model, torch.nn.Module) else []
        self._weights = _weights_state(self._modules, self.frozen)
        if self.frozen and _FROZEN_AT.get(model, self._weights) != self._weights:
            # torch.compile's guards do not look at weight values: a graph frozen with this
            # model's old weights would be reused. Drop every compiled graph (others recompile,
            # frozen with their own current weights, on their next call).
            torch._dynamo.reset()
        if self.frozen:
            _FROZEN_AT[model] = self._weights
        mode = _NO_INDUCTOR_GRAPHS.get(mode, mode) if self.cuda_graph else mode
        self._network = torch.compile(model, fullgraph=True, dynamic=False, mode=mode)
        start = time.perf_counter()
        with self._scope():
            self._build()
        self.compile_seconds = time.perf_counter() - start

    @contextlib.contextmanager
    def _scope(self):
        """Eval mode, the plan's GPU as the current device (graphs capture on the current
        device's streams), and on the CPU inductor's freezing for any (re)compile."""
        device = self.plan.device
        with contextlib.ExitStack() as stack:
            stack.enter_context(torch.no_grad())
            stack.enter_context(eval_mode(self.model))
            if device.type == "cuda":
                stack.enter_context(torch.cuda.device(device))
            if self.frozen:
                patch = {"freezing": True}
                if self.fused_group_norm:
                    patch["pre_grad_custom_pass"] = FuseGroupNorm()
                stack.enter_context(torch._inductor.config.patch(patch))
            # one graph per (network, batch shape, autocast dtype), and on the CPU per model
            # instance (frozen weights): torch's default of 8 per code object is soon reached
            stack.enter_context(torch._dynamo.config.patch(recompile_limit=RECOMPILE_LIMIT))
            yield

    def _integrate(self, x: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        return run_plan(self._network, self.plan, x, labels)

    def _build(self) -> None:
        p = self.plan
        shape = (self.batch_size,) + p.shape
        self._null = None if p.null_label is None else torch.full(
            (self.batch_size,), p.null_label, dtype=torch.long, device=p.device)
        self._check_compiled_network(shape)  # compiles the graph every step reuses
        if not self.cuda_graph:
            return
        self._labels = None if self._null is None else self._null.clone()  # static input
        self._rng = torch.zeros(2, dtype=torch.int64, device=p.device)
        self._x = torch.zeros(shape, device=p.device)
        # compile, autotune and warm the allocator on a side stream, outside any capture
        side = torch.cuda.Stream(p.device)
        side.wait_stream(torch.cuda.current_stream(p.device))
        with torch.cuda.stream(side):
            for _ in range(2):
                self._x.copy_(p.process.prior(shape, seed=self._rng, device=p.device))
                self._integrate(self._x, self._labels)
        torch.cuda.current_stream(p.device).wait_stream(side)
        self._prior_graph, self._graph = torch.cuda.CUDAGraph(), torch.cuda.CUDAGraph()
        with torch.cuda.graph(self._prior_graph):
            self._x.copy_(p.process.prior(shape, seed=self._rng, device=p.device))
        with torch.cuda.graph(self._graph, pool=self._prior_graph.pool()):
            self._out = self._integrate(self._x, self._labels)

    def _check_compiled_network(self, shape: tuple) -> None:
        """One network call on prior draws, compiled and eager: raises if they disagree beyond
        the network dtype's rounding (compilers have miscompiled this UNet: see
        kacfast._device.wide_kernels_miscompile). Costs one eager call."""
        p = self.plan
        x = p.process.prior(shape, seed=0, device=p.device)
        t, interval = p.grid[0], p.grid[0] - p.grid[1]
        compiled, eager = (guided_velocity_fn(net, self._null, p.guidance, p.null_label, p.dtype)(
            x, t, interval) for net in (self._network, self.model))
        scale = eager.abs().max().item()
        error = (compiled - eager).abs().max().item()  # NaN if the compiled call gave NaN
        tolerance = (1e-3 if p.dtype is None else 5e-2) * max(scale, 1.0)
        if not error <= tolerance:
            raise RuntimeError(
                f"the compiled network disagrees with the eager one by {error:.3g} (output scale "
                f"{scale:.3g}, tolerance {tolerance:.3g}) with torch {torch.__version__} on "
                f"{p.device.type}, dtype {p.dtype or torch.float32}: a compiler bug; sample with "
                f"compile=False.")

    def weights_changed(self) -> bool:
        """True once the model's parameters were replaced or (CPU: frozen) updated in place."""
        return _weights_state(self._modules, self.frozen) != self._weights

    def _check_weights(self) -> None:
        if self.weights_changed():
            raise RuntimeError("the model's parameters were replaced or updated after the "
                               "sampler compiled them in (frozen on the CPU, captured on CUDA): "
                               "build a new sampler.")

    def _call_labels(self, labels, n: int) -> torch.Tensor | None:
        """Checked labels (n,) on the device for n samples, or the null labels for None."""
        p = self.plan
        if labels is None:
            if p.guidance != 1.0:
                raise ValueError("guidance != 1 needs labels.")
            return self._null
        if p.null_label is None:
            raise ValueError("labels were given but the model has no num_classes: a Sampler "
                             "samples it unconditionally (kacfast.sample takes its labels).")
        labels = _as_labels(labels, p.null_label, p.device)
        if labels.numel() != n:
            raise ValueError(f"expected {n} labels (this sampler was compiled for {self.batch_size} "
                             f"samples), got {labels.numel()}.")
        return labels

    def integrate(self, x: torch.Tensor, labels=None) -> torch.Tensor:
        """Samples from given prior draws x (n, *shape), n <= batch_size (padded to the compiled
        batch and cut back: the network treats samples independently), labels (n,) integers or
        None (unconditional: the null label; needs guidance 1)."""
        self._check_weights()
        if labels is not None or self.plan.guidance != 1.0:
            labels = self._call_labels(labels, x.shape[0])
        return self._integrate_chunk(x, labels)

    def _integrate_chunk(self, x: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        """integrate() for a caller that checked the weights (cached_sampler, once a request)."""
        n = x.shape[0]
        if not 1 <= n <= self.batch_size or tuple(x.shape[1:]) != self.plan.shape:
            raise ValueError(f"x must hold 1 to {self.batch_size} samples of shape "
                             f"{self.plan.shape}, got {tuple(x.shape)}.")
        if n < self.batch_size:
            pad = self.batch_size - n
            x = torch.cat([x, x.new_zeros((pad,) + x.shape[1:])])
            if labels is not None:  # any valid label: the padded rows are cut away
                labels = torch.cat([labels, labels[-1:].expand(pad)])
        if labels is None:
            labels = self._null
        with self._scope():
            if not self.cuda_graph:
                return self._integrate(x, labels)[:n]
            self._x.copy_(x)
            if labels is not None:
                self._labels.copy_(labels)
            self._graph.replay()
            return self._out[:n].clone()

    def __call__(self, labels=None, seed: int | None = None) -> torch.Tensor:
        """(batch_size, *shape) float32 samples; labels (batch_size,) integers for a conditional
        model (None: the null label, unguided); seed: the prior's seed (default: drawn from
        torch's global RNG). Same seed and labels: the same samples as `kacfast.sample`."""
        self._check_weights()
        labels = self._call_labels(labels, self.batch_size)
        seed = draw_seed() if seed is None else seed
        _check_seed(seed, 0)
        p = self.plan
        with self._scope():
            if not self.cuda_graph:
                x = p.process.prior((self.batch_size,) + p.shape, seed=seed, device=p.device)
                return self._integrate(x, labels)
            self._rng.copy_(torch.tensor([seed, 0], dtype=torch.int64))
            if labels is not None:
                self._labels.copy_(labels)
            self._prior_graph.replay()
            self._graph.replay()
            return self._out.clone()


def compile_sampler(model: Callable, steps: int = 1, *, batch_size: int, guidance: float = 1.0,
                    solver: str = "euler", dtype=None, device=None, cuda_graph: bool | None = None,
                    mode: str | bool = "default", shape=None, process=None, grid=None,
                    clamp: bool = True) -> Sampler:
    """A `Sampler` for `batch_size` samples of `model` (arguments as in `kacfast.sample`).

    Args:
        dtype: the network's autocast dtype (None = float32, torch.bfloat16, "bf16", ...).
        device: default: the model's device.
        cuda_graph: capture prior + network + steps as CUDA graphs (default: True on CUDA; CPU:
            must be False or None).
        mode: torch.compile mode ("default", "reduce-overhead", "max-autotune",
            "max-autotune-no-cudagraphs"; True = "default").
    Building compiles the network (tens of seconds for a small UNet on a CPU; torch.compile's
    on-disk cache makes a later process faster) and, on CUDA, captures the graphs;
    `compile_seconds` says how long it took. On the CPU the weights are frozen in: after an
    in-place update (an optimizer step) the sampler raises and a new one must be built.
    Example:
        sampler = kacfast.compile_sampler(model, 1, batch_size=256)
        images = sampler(labels=torch.arange(256) % 10, seed=0)
    """
    plan = plan_sampling(model, steps, shape=shape, batch_size=batch_size, guidance=guidance,
                         solver=solver, process=process, device=device, grid=grid, clamp=clamp,
                         dtype=dtype)
    resolved = compile_mode(mode)
    if resolved is None:
        raise ValueError(f"mode must be True or a torch.compile mode, got {mode!r}.")
    return Sampler(model, plan, resolved, cuda_graph)


def cached_sampler(model: Callable, plan: SamplingPlan, batch: int, mode: str) -> Sampler:
    """The Sampler `kacfast.sample(compile=mode)` uses for chunks of `batch` samples of `plan`:
    one per (model, request) among the last CACHE_SIZE, rebuilt when the weights it compiled in
    changed."""
    # labels for a model without a null label (a plain velocity function): the CUDA graph's static
    # label buffer is sized by the null labels, so such a request runs compiled without the graph
    labels_without_null = plan.labels is not None and plan.null_label is None
    key = (id(model), batch, plan.shape, plan.grid, plan.solver, plan.guidance, plan.clamp,
           plan.dtype, str(plan.device), plan.process, plan.null_label, labels_without_null, mode,
           fuses_group_norm(plan))
    sampler = _CACHE.pop(key, None)
    if sampler is not None and (sampler.model is not model or sampler.weights_changed()):
        sampler = None
    if sampler is None:
        chunk_plan = SamplingPlan(plan.process, plan.device, plan.grid, plan.solver, plan.guidance,
                                  plan.clamp, batch, plan.shape, None, plan.dtype, plan.null_label)
        sampler = Sampler(model, chunk_plan, mode, cuda_graph=False if labels_without_null else None)
    _CACHE[key] = sampler
    while len(_CACHE) > CACHE_SIZE:
        _CACHE.popitem(last=False)
    return sampler
