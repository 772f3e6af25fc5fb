"""Every benchmark report names the machine's SIMD level and torch build: a CPU claim holds only
where it was measured (the same kernel ran 10.7x on an AVX-512 CPU and 4.3x on an AVX2 one)."""
import torch

from kacfast._device import cpu_bf16_units, tune_cpu_allocator


def pytest_addoption(parser):
    # options of this directory's suites: pass a path in benchmarks/suites (not `benchmarks`) for
    # pytest to read them
    parser.addoption("--pair", choices=("16", "28"), default="16",
                     help="the shipped model pair the fast-sampling benchmarks run (default 16x16: "
                          "28x28 takes about 3x as long)")
    parser.addoption("--tuned-allocator", action="store_true",
                     help="call kacfast.tune_cpu_allocator() first, as the kacfast CLI does "
                          "(process-wide: freed memory stays in the process)")


def pytest_configure(config):
    if config.getoption("--tuned-allocator", default=False):
        tune_cpu_allocator()


def pytest_benchmark_update_machine_info(config, machine_info):
    machine_info["simd"] = torch.backends.cpu.get_cpu_capability() + cpu_bf16_units()
    machine_info["torch"] = torch.__version__
    machine_info["torch_threads"] = torch.get_num_threads()
    machine_info["tuned_allocator"] = config.getoption("--tuned-allocator")
    machine_info["pair"] = config.getoption("--pair")
