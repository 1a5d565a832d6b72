"""GradCamCallback on a GAN that is not this project's: the protocol in its docstring is all it
needs (``discriminator``, ``generator`` and the noise shape on the LightningModule)."""

from __future__ import annotations

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import TensorBoardLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from dcgan_xai.callbacks.gradcam import GradCamCallback
from dcgan_xai.runs import RunDir, load_gradcam_epoch, load_probe, read_scores
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
    rows = read_scores(run)
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
