"""K DCGANs folded into one (the grouped ensemble) train as the K would alone: the same losses,
D outputs and weights, step by step, and a seed taken out computes exactly its column."""

from __future__ import annotations

import copy

import pytest
import torch

from benchmarks.grouped import Columns, fold, side_by_side, split_state, unfold
from dcgan_xai.models.networks import Generator, build_discriminator, dcgan_init
from dcgan_xai.models.step import gan_step

K, N, NZ, WIDTH = 3, 4, 8, 4


def assert_rounding_close(got: torch.Tensor, want: torch.Tensor) -> None:
    """Equal to fp64 rounding: the same shape and dtype, no element off by more than 1e-12 of
    the tensor's largest value (integer buffers, BatchNorm's step count, exactly)."""
    scale = want.abs().max().item() if want.is_floating_point() else 0
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12 * scale)


def seeded_nets(seed: int, arch: str = "paper", dtype: torch.dtype = torch.float64):
    torch.manual_seed(seed)  # as a single run builds its nets after seed_everything(seed)
    g, d = Generator(NZ, WIDTH), build_discriminator(arch, WIDTH)
    g.apply(dcgan_init)
    d.apply(dcgan_init)
    return g.to(dtype), d.to(dtype)


def adam(net):
    return torch.optim.Adam(net.parameters(), lr=2e-4, betas=(0.5, 0.999), foreach=False)


def step_inputs(seed: int, step: int, dtype, noise: bool):
    gen = torch.Generator().manual_seed(1000 * seed + step)
    real = torch.rand(N, 1, 64, 64, generator=gen, dtype=dtype) * 2 - 1
    z = torch.randn(N, NZ, 1, 1, generator=gen, dtype=dtype)
    extra = tuple(0.3 * torch.randn(N, 1, 64, 64, generator=gen, dtype=dtype) for _ in range(3))
    return real, z, extra if noise else None


@pytest.mark.parametrize("arch", ["paper", "tutorial"])
def test_fold_then_unfold_gives_back_every_tensor_and_each_column_is_its_net(arch):
    nets = [seeded_nets(s, arch)[1] for s in range(K)]
    folded = fold(nets)
    copies = [copy.deepcopy(n) for n in nets]
    for c in copies:
        for p in c.parameters():
            p.data.zero_()
    unfold(folded, copies)
    for a, b in zip(nets, copies, strict=True):
        for (ka, ta), (kb, tb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
            assert ka == kb and torch.equal(ta, tb), ka
    x = [torch.rand(N, 1, 64, 64, dtype=torch.float64) * 2 - 1 for _ in range(K)]
    logits = Columns(folded, K)(side_by_side(x))  # batch BN: each model's own statistics
    for k, net in enumerate(nets):
        torch.testing.assert_close(logits[:, k], net(x[k]), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("noise", [False, True])
def test_k_folded_models_train_as_each_alone_step_by_step(noise):
    """fp64 (CPU convolutions without oneDNN): 5 full GAN steps of 3 seeds, folded against
    alone. Losses, D(x) and D(G(z)) bitwise equal; every weight, buffer and Adam moment equal to
    fp64 rounding (bitwise on an AVX-512 CPU; an AVX2 CPU's kernels reduce a grouped channel in
    another order: at most 3.1e-15 of the tensor's largest value). A column mixed with another
    would be off by its whole scale."""
    dtype, steps = torch.float64, 5
    alone = [seeded_nets(s) for s in range(K)]
    folded_g = fold([g for g, _ in alone])
    folded_d = Columns(fold([d for _, d in alone]), K)
    opts = [(adam(g), adam(d)) for g, d in alone]
    fopt_g, fopt_d = adam(folded_g), adam(folded_d)
    for step in range(steps):
        inputs = [step_inputs(s, step, dtype, noise) for s in range(K)]
        single = torch.stack([gan_step(g, d, og, od, *inputs[k])
                              for k, ((g, d), (og, od)) in enumerate(zip(alone, opts, strict=True))],
                             1)  # (4, K)  # fmt: skip
        extra = (
            None if not noise else tuple(side_by_side([i[2][j] for i in inputs]) for j in range(3))
        )
        grouped = gan_step(folded_g, folded_d, fopt_g, fopt_d, side_by_side([i[0] for i in inputs]),
                           side_by_side([i[1] for i in inputs]), extra)  # fmt: skip
        assert grouped.shape == (4, K)
        assert torch.equal(grouped, single)
    for k, (g, d) in enumerate(alone):
        taken = [copy.deepcopy(g), copy.deepcopy(d)]
        unfold(folded_g, [taken[0] if i == k else copy.deepcopy(g) for i in range(K)])
        unfold(folded_d.folded, [taken[1] if i == k else copy.deepcopy(d) for i in range(K)])
        for mine, theirs in ((g, taken[0]), (d, taken[1])):
            for key, t in mine.state_dict().items():
                assert_rounding_close(theirs.state_dict()[key], t)
    # Adam's moments split by the same rule as the weights
    for fopt, index in ((fopt_g, 0), (fopt_d, 1)):
        fparams = list(fopt.param_groups[0]["params"])
        for i, fp in enumerate(fparams):
            state = fopt.state[fp]
            for k in range(K):
                own = opts[k][index]
                mine = own.state[own.param_groups[0]["params"][i]]
                for name in ("exp_avg", "exp_avg_sq"):
                    assert_rounding_close(split_state(state[name], K)[k], mine[name])
                assert float(state["step"]) == float(mine["step"]) == steps


def test_float32_folded_step_matches_to_rounding():
    """fp32 with the CPU's default convolutions: one step's losses and D outputs agree to
    rounding (oneDNN may sum in another order; compare losses, not weights after many steps)."""
    alone = [seeded_nets(s, dtype=torch.float32) for s in range(K)]
    folded_g, folded_d = fold([g for g, _ in alone]), Columns(fold([d for _, d in alone]), K)
    inputs = [step_inputs(s, 0, torch.float32, True) for s in range(K)]
    single = torch.stack([gan_step(g, d, adam(g), adam(d), *inputs[k])
                          for k, (g, d) in enumerate(alone)], 1)  # fmt: skip
    extra = tuple(side_by_side([i[2][j] for i in inputs]) for j in range(3))
    grouped = gan_step(folded_g, folded_d, adam(folded_g), adam(folded_d),
                       side_by_side([i[0] for i in inputs]), side_by_side([i[1] for i in inputs]),
                       extra)  # fmt: skip
    torch.testing.assert_close(grouped, single, rtol=1e-4, atol=1e-5)


def test_nets_of_two_architectures_are_refused():
    from dcgan_xai.errors import UserError

    with pytest.raises(UserError, match="one architecture"):
        fold([seeded_nets(0, "paper")[1], seeded_nets(1, "tutorial")[1]])
