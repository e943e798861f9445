"""Interactive exploration of a trained run: the state and logic behind notebooks/explore.ipynb.

:class:`Explorer` maps widget values (slider positions, indices, a seed) to uint8 images and
back, and switches runs in place, so it is tested without a browser; the notebook only
declares widgets, wires them to it and lays them out.
An update decodes at most a handful of images, well under 100 ms on a 2-core CPU for the
64×64 model (``python -m vaehelpers bench`` measures it).
"""

from __future__ import annotations

import base64
import io
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from .decode import to_uint8
from .figures import grid_image
from .measure import encode_all
from .objective import kl_per_dim
from .store import Run, RunDamaged, Setting, load_run


def finished(runs_dir: str | os.PathLike = "runs") -> list[Run]:
    """The finished runs under ``runs_dir``, ordered by likelihood and KL weight.

    A damaged folder is left out with a warning that names it (:class:`~vaehelpers.store.RunDamaged`).
    """
    runs = []
    for checkpoint in Path(runs_dir).glob("*/checkpoint.pt"):
        try:
            runs.append(load_run(checkpoint.parent))
        except RunDamaged as e:
            warnings.warn(f"Left out: {e}", stacklevel=3)
    return sorted((r for r in runs if r.finished), key=lambda r: (r.config.likelihood, r.config.kl_weight, r.dir.name))


def finished_runs(runs_dir: str | os.PathLike = "runs") -> dict[str, Path]:
    """Finished run folders under ``runs_dir`` by a readable label (the explorer's run chooser)."""
    return {f"{run.label} — {run.dir.name}": run.dir for run in finished(runs_dir)}


def default_run(runs: dict[str, Path]) -> str:
    """The run the explorer opens: KL weight 1, the assignment's VAE, whose codes lie within the sliders'
    range (a KL weight 0 run's codes lie far outside it); else the first."""
    prefix = f"{Setting('fixed', 1.0).label} — "
    return next((label for label in runs if label.startswith(prefix)), next(iter(runs)))


@dataclass
class Explorer:
    """A run with its validation images and its latent dimensions ordered by KL (most informative first)."""

    run: Run
    images: torch.Tensor  # uint8 validation images
    dims_by_kl: list[int]
    kl: list[float]  # mean KL of each dimension on the validation images, nats
    shown: list[float] | None = None  # the code the latent-slider image was decoded from

    @classmethod
    def open(cls, run_dir: str | os.PathLike) -> Explorer:
        run = load_run(run_dir)
        images = run.data().images[run.val_indices]
        mu, logvar = encode_all(run.model, images)
        kl = kl_per_dim(mu, logvar).mean(dim=0).tolist()
        return cls(run, images, sorted(range(len(kl)), key=lambda j: -kl[j]), kl)

    SLIDER_RANGE = 3.0
    """The latent sliders span ±3 prior standard deviations; a code outside is clamped to them."""
    SLIDER_STEP = 0.05
    """The sliders' step: the browser snaps every value to this grid."""

    def switch(self, run_dir: str | os.PathLike) -> None:
        """Explore another run, in place, so that every callback holding this explorer follows."""
        self.__dict__.update(vars(Explorer.open(run_dir)))

    @property
    def latent_dim(self) -> int:
        return self.run.config.latent_dim

    def slider_labels(self) -> list[str]:
        """One label per slider, in slider order (most informative first): 'z7 (12.3)', the KL in nats."""
        return [f"z{dim} ({self.kl[dim]:.1f})" for dim in self.dims_by_kl]

    def sliders_from_code(self, z: list[float]) -> tuple[list[float], int]:
        """A code in the model's order to slider values (slider order, clamped to the range), and how many
        of them the range clamped."""
        values = [z[dim] for dim in self.dims_by_kl]
        clamped = [max(-self.SLIDER_RANGE, min(self.SLIDER_RANGE, v)) for v in values]
        return clamped, sum(c != v for c, v in zip(clamped, values))

    def clamp_note(self, clamped: int) -> str:
        """A sentence on a code the sliders cannot show whole ('This code lies outside ±3 in 17 of 20
        dimensions: …'), or '' where none of it was clamped."""
        if not clamped:
            return ""
        return (f"This code lies outside ±{self.SLIDER_RANGE:g} in {clamped} of {self.latent_dim} dimensions: the "
                f"sliders stop at ±{self.SLIDER_RANGE:g}, and the image is decoded from the code as the sliders show it.")

    def decode_sliders(self, values: list[float]) -> torch.Tensor | None:
        """The image for these slider values (slider order), or None where every value lies within half a step
        of the code already shown: that is the browser sending back a value it snapped to the slider's grid
        (−0.591 returns as −0.6000000000000001), not a move, and decoding it again would only cost time."""
        z = self.code_from_sliders(values)
        if self.shown is not None and max(abs(a - b) for a, b in zip(z, self.shown)) < self.SLIDER_STEP / 2:
            return None
        self.shown = z
        return self.decode(z)

    def code_from_sliders(self, values: list[float]) -> list[float]:
        """Slider values (slider order) to a code in the model's order."""
        z = [0.0] * self.latent_dim
        for value, dim in zip(values, self.dims_by_kl):
            z[dim] = float(value)
        return z

    def image(self, index: int) -> torch.Tensor:
        """Validation image ``index`` (wrapped into range), uint8 3×S×S."""
        return self.images[index % len(self.images)]

    @torch.no_grad()
    def code_of(self, index: int) -> list[float]:
        """μ of q(z|x) for validation image ``index``: where the sliders start."""
        mu, _ = self.run.model.encode(self.image(index)[None].float() / 255)
        return mu[0].tolist()

    @torch.no_grad()
    def decode(self, z: list[float]) -> torch.Tensor:
        """Slider values (one per latent dimension, in the model's order) to a uint8 image."""
        return to_uint8(self.run.model.decode(torch.tensor([z], dtype=torch.float32)))[0]

    @torch.no_grad()
    def interpolate(self, a: int, b: int, t: float, spherical: bool = False) -> torch.Tensor:
        """The decoded point at fraction ``t`` of the way from μ(image a) to μ(image b).

        Linear, or spherical (slerp: along the great circle, keeping the norm typical of the prior).
        """
        za, zb = torch.tensor(self.code_of(a)), torch.tensor(self.code_of(b))
        if spherical:
            cos = torch.dot(za, zb) / (za.norm() * zb.norm()).clamp_min(1e-8)
            omega = torch.arccos(cos.clamp(-1, 1))
            if omega.abs() > 1e-4:
                z = (torch.sin((1 - t) * omega) * za + torch.sin(t * omega) * zb) / torch.sin(omega)
                return self.decode(z.tolist())
        return self.decode(((1 - t) * za + t * zb).tolist())

    @torch.no_grad()
    def prior_samples(self, n: int, seed: int) -> torch.Tensor:
        """``n`` decodings of z ~ N(0, I) drawn with ``seed``: uint8 n×3×S×S."""
        return to_uint8(self.run.model.sample(n, torch.Generator().manual_seed(seed)))

    @torch.no_grad()
    def reconstruction(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(original, reconstruction from μ, error map): the error is |x − x̂| averaged over channels,
        scaled so that 255 is an error of 0.5 or more, as a grey image."""
        x = self.image(index)
        x_hat = self.decode(self.code_of(index))
        error = ((x.float() - x_hat.float()).abs().mean(dim=0) / 127.5).clamp(0, 1)
        return x, x_hat, to_uint8(error.expand(3, -1, -1))


def set_quietly(controls: list, values: list, callback, labels: list[str] | None = None) -> None:
    """Set widget values (and descriptions) without calling ``callback`` once per widget; the caller
    calls it once afterwards."""
    for i, (control, value) in enumerate(zip(controls, values)):
        control.unobserve(callback, names="value")
        if labels is not None:
            control.description = labels[i]
        control.value = value
        control.observe(callback, names="value")


def png(images: torch.Tensor, scale: int = 2, nrow: int | None = None) -> bytes:
    """uint8 images (3×S×S, or N×3×S×S laid out in a row or a grid of ``nrow``) as PNG bytes."""
    if images.dim() == 3:
        images = images[None]
    picture = Image.fromarray(grid_image(images, nrow or len(images)).numpy())
    picture = picture.resize((picture.width * scale, picture.height * scale), Image.NEAREST)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


def show_widget(widget, fallback: bytes | memoryview | str) -> None:
    """Display a widget with a still of its current state (PNG bytes, or a line of text) as the fallback.

    JupyterLab draws the widget; where there is no kernel to drive it (exported HTML, a
    notebook run under nbval and opened later) the still is shown instead of a placeholder.
    """
    from IPython.display import display

    bundle = {k: v for k, v in widget._repr_mimebundle_().items() if k != "text/plain"}
    if isinstance(fallback, str):
        bundle["text/plain"] = fallback
    else:  # PNG bytes (an Image widget's value may be a memoryview)
        bundle["image/png"] = base64.b64encode(bytes(fallback)).decode()
        bundle["text/plain"] = "(an interactive widget: open this notebook in JupyterLab with a running kernel)"
    display(bundle, raw=True)
