"""Baselines that kacfast's Kac samplers are compared against: DDPM / DDIM and EDM (Heun).

Same network-contract family as kacfast models (`model(x, t, y)` with t a (B,) float tensor), same
guidance convention (one batched call on cat([x, x]) with labels cat([y, num_classes])).
"""
from kacfast.baselines.ddpm import PREDICTIONS, DDPMSchedule, ddim_sample, ddpm_loss, ddpm_sample
from kacfast.baselines.edm import EDMPrecond, edm_loss, edm_nfe, edm_sample, edm_sigmas

__all__ = ["edm_sample", "edm_sigmas", "edm_nfe", "EDMPrecond", "edm_loss",
           "ddpm_sample", "ddim_sample", "ddpm_loss", "DDPMSchedule", "PREDICTIONS"]
