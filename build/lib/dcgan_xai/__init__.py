"""dcgan_xai: explain a DCGAN's discriminator with Grad-CAM."""

__version__ = "0.1.0"
