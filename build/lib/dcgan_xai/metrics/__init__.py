"""Generator quality: an MNIST classifier trained here, and FID/KID in its feature space."""
