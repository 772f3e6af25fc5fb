"""Output metadata of each op (shapes, dtypes, devices) for FakeTensor / torch.compile tracing,
shared by the C++ and Triton registrations."""
import torch


def kac_velocity(x, s, a, c, eps):
    return torch.empty_like(x)


def kac_noise(s, a, c, seed, offset, dtype):
    return torch.empty(s.shape, dtype=dtype, device=s.device)


def kac_noise_seeded(s, rng, a, c, dtype):
    return kac_noise(s, a, c, 0, 0, dtype)


def kac_noise_target(x0, t, a, c, T, clock, eps, seed, offset):
    return torch.empty_like(x0), torch.empty_like(x0)


def kac_guided_step(x, v, v_prev, guidance, h, alpha, beta, clamp, return_v):
    return torch.empty_like(x), (torch.empty_like(x) if return_v else x.new_empty(0))


def group_norm(x, weight, bias, groups, eps, silu):
    # the C++ kernel's layout rule: channels-last input (and only that) stays channels-last
    channels_last = (x.dim() == 4 and not x.is_contiguous()
                     and x.is_contiguous(memory_format=torch.channels_last))
    return x.new_empty(x.shape).contiguous(
        memory_format=torch.channels_last if channels_last else torch.contiguous_format)
