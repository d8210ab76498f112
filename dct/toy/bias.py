"""The planted-bias toy guides and their unbiased replica: ``python -m dct.toy.bias [--out DIR] [--guides ...]``.

Two biases, one guide each, both on the pair the generator draws alike (its squares come out as round blobs):
- ``guide-biased`` (background): in its training data the red square (class 1) appears only on dark
  backgrounds and the red circle (class 0) only on light ones; on generated images the background separates
  them better than the shape does, so a token optimised to please this guide should darken the background.
- ``guide-biased-size`` (size): the red square appears only small and the red circle only large; the generator
  can draw both sizes ("a small red circle"), so the token should shrink the shape.
The bias probe must find each, and its intervention test must confirm it (docs/probe.md).

Both guides are trained by the same code as the shipped guide's first stage (:func:`dct.worlds.train.
train_classifier` with the guide's architecture, steps, batch and share of VAE reconstructions), from the
same seeds, on the same images except the background level of those two classes (:func:`dct.toy.shapes.
render` remaps the same random draw, so shape, size, position, colour and noise are identical). The frozen
VAE is the shipped pipeline's. Neither gets the shipped guide's last stage (fine-tuning on images the
generator redraws), which has biases of its own: the replica, not the shipped guide, is the control.

The check printed at the end is the one docs/probe.md reports: the guides' probability of the biased class on
renders of it with the planted background (dark) and with the background flipped (light), same seeds.
"""

from __future__ import annotations

import argparse
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from dct.toy import captions, models, shapes
from dct.worlds import train

logger = logging.getLogger(__name__)

BIASED_CLASS = 1  # "red square"
LOOK_ALIKE = 0  # "red circle": what the generator draws a red square as
DARK = (0.08, 0.35)  # shapes.ShapeAttributes' "dark" background levels
LIGHT = (0.65, 0.92)  # ... and "light"
BIAS: dict[int, tuple[float, float]] = {BIASED_CLASS: DARK, LOOK_ALIKE: LIGHT}
SMALL = (6.5, 8.3)  # shapes.ShapeAttributes' "small" radii
LARGE = (10.2, 12.0)  # ... and "large"
SIZE_BIAS: dict[int, tuple[float, float]] = {BIASED_CLASS: SMALL, LOOK_ALIKE: LARGE}


@dataclass(frozen=True)
class PlantedBias:
    """What a guide's training renders narrow (class id → range, as :func:`dct.toy.shapes.sample` takes them),
    and the biased class's counterfactual: its planted range and the flipped one."""

    backgrounds: dict[int, tuple[float, float]] | None = None
    sizes: dict[int, tuple[float, float]] | None = None

    def counterfactual(self) -> dict[str, dict[str, dict[int, tuple[float, float]]]]:
        """``{"planted": kwargs, "flipped": kwargs}`` for :func:`dct.toy.shapes.sample` of the biased class."""
        key, ranges = ("backgrounds", self.backgrounds) if self.backgrounds else ("sizes", self.sizes)
        return {
            "planted": {key: {BIASED_CLASS: ranges[BIASED_CLASS]}},
            "flipped": {key: {BIASED_CLASS: ranges[LOOK_ALIKE]}},
        }


# Guide name → its planted bias; the replica (models.GUIDE_VARIANTS' last) is the control of both: the same
# code, seeds and renders with nothing narrowed.
PLANTED: dict[str, PlantedBias] = {
    "guide-biased": PlantedBias(backgrounds=BIAS),
    "guide-biased-size": PlantedBias(sizes=SIZE_BIAS),
}
# Renders for the counterfactual check: a seed block none of the toy's classifiers was trained on.
CHECK_SEED = 70_000


def training_data(num_images: int, bias: PlantedBias | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The guides' training renders (the shipped world's seeds); with a ``bias``, its planted ranges."""
    images, labels, _ = shapes.sample(
        num_images, shapes.TRAIN_SEED, backgrounds=bias and bias.backgrounds, sizes=bias and bias.sizes
    )
    return images, labels


def load_shipped_vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL.from_pretrained(models.PIPELINE_DIR, subfolder="vae").requires_grad_(False).eval()


def train_guide(name: str, num_images: int, steps: int, seed: int, vae) -> tuple[torch.nn.Module, object]:
    """One guide: ``name`` is one of :data:`models.GUIDE_VARIANTS`; the same seed gives all the same draws."""
    images, labels = training_data(num_images, PLANTED.get(name))
    gen = torch.Generator().manual_seed(seed)
    means, stds = train.encode(vae, images)
    recon = train.decode(vae, means + stds * torch.randn(means.shape, generator=gen))
    return train.train_classifier("guide", shapes.NUM_CLASSES, images, recon, labels, steps, 128, gen, recon_share=0.8)


@torch.no_grad()
def counterfactual(net, prep, vae, n: int = 256, bias: PlantedBias = PLANTED["guide-biased"]) -> dict[str, float]:
    """The guide's mean probability and top-1 accuracy of :data:`BIASED_CLASS` on ``n`` renders of it with the
    ``bias``'s planted and its flipped range (same seeds: otherwise the same images), on the renders and their VAE
    reconstructions; keys ``"{render|reconstruction} {planted|flipped} {probability|accuracy}"``."""
    out: dict[str, float] = {}
    for background, narrowed in bias.counterfactual().items():
        images, _, _ = shapes.sample(n, CHECK_SEED, [BIASED_CLASS], **narrowed)
        for kind, x in (("render", images), ("reconstruction", train.decode(vae, train.encode(vae, images)[0]))):
            probs = net(prep(x)).softmax(dim=1)
            out[f"{kind} {background} probability"] = probs[:, BIASED_CLASS].mean().item()
            out[f"{kind} {background} accuracy"] = (probs.argmax(dim=1) == BIASED_CLASS).float().mean().item()
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=models.WEIGHTS_DIR, help="weights directory (default: the shipped one)")
    p.add_argument("--num-images", type=int, default=12_000, help="training renders (the shipped guide's count)")
    p.add_argument("--steps", type=int, default=400, help="training steps (the shipped guide's first stage)")
    p.add_argument("--seed", type=int, default=0)
    # The shipped weights were trained with 1 thread (CPU results vary slightly with the thread count).
    p.add_argument("--threads", type=int, default=1, help="CPU threads (default 1, as for the shipped weights)")
    p.add_argument(
        "--guides",
        default=",".join(models.GUIDE_VARIANTS),
        help=f"comma list of the guides to train (default all: {','.join(models.GUIDE_VARIANTS)})",
    )
    args = p.parse_args(argv)
    guides = [g.strip() for g in args.guides.split(",") if g.strip()]
    unknown = [g for g in guides if g not in models.GUIDE_VARIANTS]
    if unknown or not guides:
        p.error(f"--guides {args.guides!r}: unknown {unknown!r}; choose from {list(models.GUIDE_VARIANTS)}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    args.out.mkdir(parents=True, exist_ok=True)
    vae = load_shipped_vae()
    names = list(captions.SPECIES_NAMES)
    for name in guides:
        t0 = time.perf_counter()
        net, prep = train_guide(name, args.num_images, args.steps, args.seed, vae)
        models.save_classifier(net, "guide", names, models.classifier_file(args.out, name))
        test_images, test_labels, _ = shapes.sample(2000, shapes.TRAIN_SEED + 1)
        bias = PLANTED.get(name, PLANTED["guide-biased"])
        check = counterfactual(net, prep, vae, bias=bias)
        print(
            f"{name}: {time.perf_counter() - t0:.0f} s; test accuracy on fresh renders "
            f"{train.accuracy(net, prep, test_images, test_labels):.4f}"
        )
        what = "background" if bias.backgrounds else "size"
        for kind in ("render", "reconstruction"):
            planted, flipped = check[f"{kind} planted probability"], check[f"{kind} flipped probability"]
            print(
                f"  P({shapes.FINE_CLASSES[BIASED_CLASS]}) on its {kind}s: planted {what} {planted:.3f}, flipped "
                f"{flipped:.3f} (drop {planted - flipped:+.3f}); top-1 {check[f'{kind} planted accuracy']:.3f} -> "
                f"{check[f'{kind} flipped accuracy']:.3f}"
            )


if __name__ == "__main__":
    main()
