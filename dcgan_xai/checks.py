"""What a training refuses before anything is written: values the schema's types cannot catch
(:data:`dcgan_xai.config.TRAIN_RANGES`), what depends on several settings, and what this machine
cannot do."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from omegaconf import DictConfig

from dcgan_xai.config import TRAIN_RANGES, check_ranges, refuse_added_keys
from dcgan_xai.data.mnist import MNISTDataModule
from dcgan_xai.errors import UserError
from dcgan_xai.models.networks import IMAGE_SIZE, Generator, build_discriminator
from dcgan_xai.numerics import single_process, trains_on_cuda
from dcgan_xai.xai.gradcam import layer_names


def validate(cfg: DictConfig) -> None:
    """Refuse values the schema's types cannot catch, before anything is written: the ranges of
    :data:`dcgan_xai.config.TRAIN_RANGES`, then what depends on several settings or on the
    machine."""
    refuse_added_keys(cfg)  # where check_overrides did not run
    check_ranges(cfg, TRAIN_RANGES)
    if cfg.data.image_size != IMAGE_SIZE:
        raise UserError(
            f"data.image_size={cfg.data.image_size} is not allowed; the DCGAN generator and "
            f"discriminators are built for {IMAGE_SIZE}x{IMAGE_SIZE} images (allowed: {IMAGE_SIZE})"
        )
    if Path(cfg.data.root).exists() and not Path(cfg.data.root).is_dir():
        raise UserError(f"data.root={cfg.data.root} is a file; it must be a directory")
    check_machine(cfg)
    sp = cfg.speed
    if sp.cuda_graph and sp.compile:
        raise UserError(
            "speed.cuda_graph=true with speed.compile=true is not allowed; choose one of them"
        )
    if sp.cuda_graph and not (
        trains_on_cuda(str(cfg.trainer.accelerator)) and single_process(cfg.trainer)
    ):
        raise UserError(
            "speed.cuda_graph=true is not allowed here; it needs one process on one CUDA GPU "
            f"(trainer.accelerator={cfg.trainer.accelerator}, devices={cfg.trainer.devices}, "
            f"CUDA available: {torch.cuda.is_available()})"
        )
    if cfg.seeds is not None and (sp.compile or not single_process(cfg.trainer)):
        raise UserError(
            f"seeds={list(cfg.seeds)} trains the seeds in one process on one device: not with "
            f"speed.compile=true or several devices (trainer.devices={cfg.trainer.devices}, "
            f"num_nodes={cfg.trainer.num_nodes}, strategy={cfg.trainer.strategy})"
        )
    gc = cfg.callbacks.gradcam
    if gc.enabled:
        with torch.device("meta"):  # draws nothing from the global RNG
            valid = layer_names(build_discriminator(cfg.model.arch, 1))
        for layer in gc.layers:
            if layer not in valid:
                raise UserError(
                    f"unknown Grad-CAM layer {layer!r} in callbacks.gradcam.layers; "
                    f"valid layers of model.arch={cfg.model.arch}: {', '.join(valid)}"
                )


def check_machine(cfg: DictConfig) -> None:
    """A GPU asked for where there is none, a half precision the CPU cannot train in, or nets
    too large for the machine's memory (counted on the meta device, nothing allocated)."""
    accelerator, precision = str(cfg.trainer.accelerator), str(cfg.trainer.precision)
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise UserError(f"trainer.accelerator={accelerator} but this machine has no CUDA GPU; "
                        "use trainer.accelerator=auto (or cpu)")  # fmt: skip
    if precision.startswith("16") and not trains_on_cuda(accelerator):
        raise UserError(f"trainer.precision={precision} needs a CUDA GPU; on the CPU use "
                        "bf16-mixed or 32-true (or auto)")  # fmt: skip
    m = cfg.model
    try:
        with torch.device("meta"):
            nets = [Generator(m.nz, m.ngf), build_discriminator(m.arch, m.ndf)]
        params = sum(p.numel() for net in nets for p in net.parameters())
        size = f"{params:,} parameters (about {16 * params / 2**30:,.0f} GiB with gradients and Adam's state)"
    except RuntimeError:  # a tensor size that overflows 64 bits
        params, size = 2**62, "more parameters than 64 bits can count"
    have = (torch.cuda.get_device_properties(0).total_memory if trains_on_cuda(accelerator)
            else os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))  # fmt: skip
    if 16 * params > have:  # fp32 weights, gradients and Adam's two moments
        raise UserError(
            f"model.nz={m.nz}, ngf={m.ngf}, ndf={m.ndf} make {size}; this machine has "
            f"{have / 2**30:,.0f} GiB: choose smaller widths"
        )


def check_probe_size(cfg: DictConfig, datamodule: MNISTDataModule) -> None:
    assert datamodule.test_set is not None
    size, available = cfg.callbacks.gradcam.probe_size, len(datamodule.test_set)
    if cfg.callbacks.gradcam.enabled and size > available:
        raise UserError(
            f"callbacks.gradcam.probe_size={size} is larger than the test split "
            f"({available} images); allowed: 1..{available}"
        )
