"""GradCamCallback on a GAN that is not this project's: the protocol in its docstring is all it
needs (``discriminator``, ``generator`` and the noise shape on the LightningModule)."""

from __future__ import annotations

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import TensorBoardLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from dcgan_xai.callbacks.gradcam import GradCamCallback
from dcgan_xai.data.mnist import to_unit_range
from dcgan_xai.data.probe import make_probe
from dcgan_xai.errors import UserError
from dcgan_xai.runs.layout import RunDir, load_gradcam_epoch, load_probe, save_probe
from dcgan_xai.runs.tables import SCORES
from dcgan_xai.state import preserved_state
from dcgan_xai.xai import digit_mask, grad_cam
from dcgan_xai.xai.gradcam import set_bn_mode
from tests.helpers import event_tags


class TinyDiscriminator(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.LeakyReLU(0.2))
        self.down = nn.Sequential(nn.Conv2d(4, 8, 4, 2, 1), nn.LeakyReLU(0.2))
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(8 * 8 * 8, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.down(self.features(x))).squeeze(1)


class TinyGAN(L.LightningModule):
    """A 16x16 GAN in the style of Lightning's GAN tutorial: noise (N, latent_dim)."""

    def __init__(self, latent_dim: int = 8):
        super().__init__()
        self.save_hyperparameters()
        self.automatic_optimization = False
        self.generator = nn.Sequential(
            nn.Linear(latent_dim, 16 * 16), nn.Tanh(), nn.Unflatten(1, (1, 16, 16))
        )
        self.discriminator = TinyDiscriminator()

    def training_step(self, batch, batch_idx):
        (real,) = batch
        opt_g, opt_d = self.optimizers()
        z = torch.randn(real.shape[0], self.hparams["latent_dim"])
        fake = self.generator(z)
        ones, zeros = torch.ones(real.shape[0]), torch.zeros(real.shape[0])
        d_loss = F.binary_cross_entropy_with_logits(self.discriminator(real), ones)
        d_loss = d_loss + F.binary_cross_entropy_with_logits(
            self.discriminator(fake.detach()), zeros
        )
        opt_d.zero_grad()
        self.manual_backward(d_loss)
        opt_d.step()
        g_loss = F.binary_cross_entropy_with_logits(self.discriminator(fake), ones)
        opt_g.zero_grad()
        self.manual_backward(g_loss)
        opt_g.step()

    def configure_optimizers(self):
        return [
            torch.optim.Adam(self.generator.parameters(), lr=1e-3),
            torch.optim.Adam(self.discriminator.parameters(), lr=1e-3),
        ]


def fit(tmp_path, callbacks: list[L.Callback]) -> TinyGAN:
    gen = torch.Generator().manual_seed(0)
    real = torch.rand(64, 1, 16, 16, generator=gen) * 2 - 1
    L.seed_everything(0, verbose=False)
    model = TinyGAN()
    trainer = L.Trainer(
        max_epochs=2,
        accelerator="cpu",
        logger=TensorBoardLogger(tmp_path, name="", version="tb"),
        callbacks=callbacks,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, DataLoader(TensorDataset(real), batch_size=16))
    return model


def test_the_callback_explains_any_lightning_gan_without_changing_its_training(tmp_path):
    gen = torch.Generator().manual_seed(1)
    images = (torch.rand(40, 1, 16, 16, generator=gen) * 255).to(torch.uint8)
    labels = torch.arange(40) % 4
    callback = GradCamCallback(
        tmp_path / "run", layers=["features", "down"], probe_size=8,
        real_images=images, real_labels=labels,
    )  # fmt: skip
    explained = fit(tmp_path / "a", [callback])
    plain = fit(tmp_path / "b", [])
    for a, b in zip(explained.parameters(), plain.parameters(), strict=True):
        assert torch.equal(a, b)  # the explanations left the training as it was

    run = RunDir(tmp_path / "run")
    probe = load_probe(run)
    assert probe.noise.shape == (8, 8)  # the latent_dim hparam gave the noise shape
    assert torch.bincount(probe.labels, minlength=4).tolist() == [2, 2, 2, 2]
    rows = SCORES.read(run)
    assert [(r["epoch"], r["layer"]) for r in rows] == [
        (1, "down"), (1, "features"), (2, "down"), (2, "features"),
    ]  # fmt: skip
    record = load_gradcam_epoch(run, 2)
    for layer in ("features", "down"):
        maps = record["maps"][layer]["real"].float()
        assert maps.shape == (8, 16, 16) and 0 <= maps.min() and maps.max() <= 1
    tags = event_tags(tmp_path / "a" / "tb")
    assert (
        "gradcam/down/real" in tags["images"]
        and "gradcam/features/real_focus_mean" in tags["scalars"]
    )


# Three GANs in the shapes other people write them (written here, not copied from anywhere).


class ProbabilityD(nn.Module):
    """A 16x16 DCGAN discriminator kept in one nn.Sequential and ending in a Sigmoid."""

    def __init__(self) -> None:
        super().__init__()
        self.main = nn.Sequential(
            nn.Conv2d(1, 4, 4, 2, 1), nn.LeakyReLU(0.2),
            nn.Conv2d(4, 8, 4, 2, 1), nn.BatchNorm2d(8), nn.LeakyReLU(0.2),
            nn.Conv2d(8, 1, 4, 1, 0), nn.Flatten(), nn.Sigmoid(),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x).squeeze(1)


class NetDNetG(L.LightningModule):
    """``netD``/``netG``, a ``latent_dim`` hparam, and a transposed-convolution G that takes
    noise (N, z, 1, 1): the shape (N, z) that ``latent_dim`` suggests does not go in."""

    def __init__(self, latent_dim: int = 8):
        super().__init__()
        self.save_hyperparameters()
        self.automatic_optimization = False
        self.netG = nn.Sequential(
            nn.ConvTranspose2d(latent_dim, 8, 4, 1, 0), nn.BatchNorm2d(8), nn.ReLU(),
            nn.ConvTranspose2d(8, 4, 4, 2, 1), nn.ReLU(),
            nn.ConvTranspose2d(4, 1, 4, 2, 1), nn.Tanh(),
        )  # fmt: skip
        self.netD = ProbabilityD()

    def training_step(self, batch, batch_idx):
        (real,) = batch
        opt_g, opt_d = self.optimizers()
        fake = self.netG(torch.randn(real.shape[0], self.hparams["latent_dim"], 1, 1))
        ones, zeros = torch.ones(real.shape[0]), torch.zeros(real.shape[0])
        d_loss = F.binary_cross_entropy(self.netD(real), ones)
        d_loss = d_loss + F.binary_cross_entropy(self.netD(fake.detach()), zeros)
        opt_d.zero_grad()
        self.manual_backward(d_loss)
        opt_d.step()
        g_loss = F.binary_cross_entropy(self.netD(fake), ones)
        opt_g.zero_grad()
        self.manual_backward(g_loss)
        opt_g.step()

    def configure_optimizers(self):
        return [torch.optim.Adam(self.netG.parameters(), lr=1e-3),
                torch.optim.Adam(self.netD.parameters(), lr=1e-3)]  # fmt: skip


class RGBDropoutGAN(TinyGAN):
    """32x32 RGB images, ``D``/``G``, Dropout in D's blocks, a ``z_dim`` hparam."""

    def __init__(self, z_dim: int = 8):
        L.LightningModule.__init__(self)
        self.save_hyperparameters()
        self.hparams["latent_dim"] = z_dim  # TinyGAN's training step reads it
        self.automatic_optimization = False
        self.G = nn.Sequential(
            nn.Linear(z_dim, 3 * 32 * 32), nn.Tanh(), nn.Unflatten(1, (3, 32, 32))
        )
        self.D = nn.Sequential()
        self.D.add_module(
            "block1", nn.Sequential(nn.Conv2d(3, 4, 4, 2, 1), nn.LeakyReLU(0.2), nn.Dropout(0.5))
        )
        self.D.add_module(
            "block2", nn.Sequential(nn.Conv2d(4, 8, 4, 2, 1), nn.LeakyReLU(0.2), nn.Dropout(0.5))
        )
        self.D.add_module(
            "head", nn.Sequential(nn.Flatten(), nn.Linear(8 * 8 * 8, 1), nn.Flatten(0))
        )

    @property
    def generator(self) -> nn.Module:  # TinyGAN's training step uses these names
        return self.G

    @property
    def discriminator(self) -> nn.Module:
        return self.D

    def configure_optimizers(self):
        return [torch.optim.Adam(self.G.parameters(), lr=1e-3),
                torch.optim.Adam(self.D.parameters(), lr=1e-3)]  # fmt: skip


class MLPGAN(TinyGAN):
    """The plain MLP GAN of the tutorials: nothing in D has a spatial map."""

    def __init__(self, latent_dim: int = 8):
        super().__init__(latent_dim)
        self.discriminator = nn.Sequential(
            nn.Flatten(), nn.Linear(16 * 16, 32), nn.LeakyReLU(0.2), nn.Linear(32, 1)
        )


def fit_gan(make, tmp_path, size, callbacks, channels=1):
    gen = torch.Generator().manual_seed(0)
    real = torch.rand(64, channels, size, size, generator=gen) * 2 - 1
    L.seed_everything(0, verbose=False)
    model = make()
    trainer = L.Trainer(max_epochs=2, accelerator="cpu", logger=False, callbacks=callbacks,
                        enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False)  # fmt: skip
    trainer.fit(model, DataLoader(TensorDataset(real), batch_size=16))
    return model, trainer


def uint8_images(n, channels, size):
    gen = torch.Generator().manual_seed(1)
    return (torch.rand(n, channels, size, size, generator=gen) * 255).to(torch.uint8)


def test_a_sigmoid_d_in_one_sequential_named_netd_with_z_by_1_by_1_noise(tmp_path):
    """The README's line with the layers as paths: names, noise shape and the Sigmoid found."""
    callback = GradCamCallback(tmp_path / "run", layers=["main.1", "main.4"], probe_size=8,
                               real_images=uint8_images(16, 1, 16))  # fmt: skip
    explained, _ = fit_gan(NetDNetG, tmp_path, 16, [callback])
    plain, _ = fit_gan(NetDNetG, tmp_path, 16, [])
    for a, b in zip(explained.parameters(), plain.parameters(), strict=True):
        assert torch.equal(a, b)
    run = RunDir(tmp_path / "run")
    probe = load_probe(run)
    assert probe.noise.shape == (8, 8, 1, 1)  # (8,) was tried first and did not go in
    record = load_gradcam_epoch(run, 2)
    assert record["maps"]["main.4"]["real"].shape == (8, 16, 16)
    with preserved_state(explained.netD):
        set_bn_mode(explained.netD, "batch")
        probability = explained.netD(to_unit_range(probe.images)).mean().item()
    assert record["d_real"] == pytest.approx(probability, abs=1e-6)  # not squashed twice


def test_rgb_32x32_with_dropout_gives_the_same_maps_under_any_seed(tmp_path):
    callback = GradCamCallback(tmp_path / "run", layers=["block1", "block2"], probe_size=8,
                               real_images=uint8_images(16, 3, 32))  # fmt: skip
    model, _ = fit_gan(RGBDropoutGAN, tmp_path, 32, [callback], channels=3)
    plain, _ = fit_gan(RGBDropoutGAN, tmp_path, 32, [], channels=3)
    for a, b in zip(model.parameters(), plain.parameters(), strict=True):
        assert torch.equal(a, b)  # Dropout's draws in training are untouched by the callback
    probe = load_probe(RunDir(tmp_path / "run"))
    x = to_unit_range(probe.images)
    maps = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        maps.append(grad_cam(model.D, x, "block2", bn_mode="batch"))
    assert torch.equal(maps[0], maps[1])  # Dropout stays off in both BN modes
    with pytest.raises(UserError, match=r"method=gradcam_pre needs a block \(conv, \[norm,\] "
                       r"activation\); this one is \(Conv2d, LeakyReLU, Dropout\)"):  # fmt: skip
        fit_gan(RGBDropoutGAN, tmp_path, 32, [GradCamCallback(
            tmp_path / "pre", layers=["block1"], methods=["gradcam_pre"], probe_size=8,
            real_images=uint8_images(16, 3, 32))], channels=3)  # fmt: skip


@pytest.mark.parametrize(
    ("make", "kwargs", "message"),
    [
        (MLPGAN, {"layers": ["1"]}, r"layer '1' gives \(2, 32\) for 2 images: no spatial map"),
        (TinyGAN, {"layers": ["down"], "real_images": uint8_images(16, 1, 16).float()},
         r"real images must be uint8 \(N, C, H, W\) in 0..255, not torch.float32"),
        (TinyGAN, {"layers": ["down"], "noise_shape": (8, 1, 1)},
         r"the generator takes none of the noise shapes tried \(\(8, 1, 1\): "),
        (TinyGAN, {"layers": ["down.9"]}, r"unknown Grad-CAM layer 'down.9'; valid layers: "),
        (TinyGAN, {"layers": ["down"], "real_images": uint8_images(16, 1, 20)},
         r"the generator makes images \(1, 16, 16\), the probe's real images are \(1, 20, 20\)"),
        (NetDNetG, {"layers": ["main.1"], "discriminator": "critic", "generator": "netG"},
         r"cannot find the discriminator and generator of NetDNetG \(it has: netG, netD\)"),
    ],
)  # fmt: skip
def test_what_cannot_be_explained_is_refused_before_the_first_step(tmp_path, make, kwargs, message):
    kwargs = {"real_images": uint8_images(16, 1, 16), "probe_size": 8, **kwargs}
    model = make()
    initial = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(UserError, match=message) as err:
        fit_gan(lambda: model, tmp_path, 16, [GradCamCallback(tmp_path / "run", **kwargs)])
    assert "\n" not in str(err.value)
    # refused at train start: not one optimiser step was taken
    assert all(torch.equal(a, b) for a, b in zip(initial, model.parameters(), strict=True))


def test_a_probe_of_a_run_that_never_explained_an_epoch_is_made_again(tmp_path):
    run = RunDir(tmp_path / "run")
    run.root.mkdir()
    stale = make_probe(uint8_images(16, 1, 16), torch.zeros(16, dtype=torch.long), 8, 0, (3,))
    save_probe(run, stale)  # a failed first try with another noise shape
    callback = GradCamCallback(run.root, layers=["down"], probe_size=8,
                               real_images=uint8_images(16, 1, 16))  # fmt: skip
    fit_gan(TinyGAN, tmp_path, 16, [callback])
    assert load_probe(run).noise.shape == (8, 8)


def test_focus_reads_the_mean_over_channels():
    image = -torch.ones(1, 3, 4, 4)
    image[0, 0, :2] = 1.0  # bright only in the first channel, top half: channel 0 alone says digit
    image[0, :, 3] = 1.0  # white in the bottom row
    assert digit_mask(image)[0].sum() == 4  # only the white row is above 0.5 in the mean
