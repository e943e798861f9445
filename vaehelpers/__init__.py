"""Train, measure and report convolutional VAEs on images.

See docs/model-and-measurements.md for the conventions (nats per image, the Gaussian constant, bits/dim).
"""

from .data import ImageSet, load_images, split_indices
from .faces import make_faces
from .model import ConvVAE
from .objective import vae_loss
from .store import Run, RunConfig, load_run
from .train import fit

__all__ = ["ConvVAE", "ImageSet", "Run", "RunConfig", "fit", "load_images", "load_run", "make_faces",
           "split_indices", "vae_loss"]
