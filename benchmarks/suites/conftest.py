"""Every benchmark report names the machine's SIMD level and torch build: a CPU claim holds only
where it was measured (the same kernel ran 10.7x on an AVX-512 CPU and 4.3x on an AVX2 one)."""
import torch

from kacfast._device import cpu_has_bf16


def pytest_benchmark_update_machine_info(config, machine_info):
    bf16 = " + native bf16" if cpu_has_bf16() else ", no native bf16"
    machine_info["simd"] = torch.backends.cpu.get_cpu_capability() + bf16
    machine_info["torch"] = torch.__version__
    machine_info["torch_threads"] = torch.get_num_threads()
