"""The planted-bias toy guide and its unbiased replica: ``python -m dct.toy.bias [--out DIR]``.

The bias: in the biased guide's training data the red square (class 1) appears only on dark backgrounds and
the red circle (class 0) only on light ones. The generator draws the two alike (its squares come out as
round blobs), so on generated images the background separates them better than the shape does: a token
optimised to please this guide should darken the background, and the bias probe must find that.

Both guides are trained by the same code as the shipped guide's first stage (:func:`dct.toy.train.
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
from pathlib import Path

import torch

from dct.toy import captions, models, shapes, train

logger = logging.getLogger(__name__)

BIASED_CLASS = 1  # "red square"
LOOK_ALIKE = 0  # "red circle": what the generator draws a red square as
DARK = (0.08, 0.35)  # shapes.ShapeAttributes' "dark" background levels
LIGHT = (0.65, 0.92)  # ... and "light"
BIAS: dict[int, tuple[float, float]] = {BIASED_CLASS: DARK, LOOK_ALIKE: LIGHT}
# Renders for the counterfactual check: a seed block none of the toy's classifiers was trained on.
CHECK_SEED = 70_000


def training_data(num_images: int, biased: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The guides' training renders (the shipped world's seeds); with ``biased``, the planted backgrounds."""
    images, labels, _ = shapes.sample(num_images, shapes.TRAIN_SEED, backgrounds=BIAS if biased else None)
    return images, labels


def load_shipped_vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL.from_pretrained(models.PIPELINE_DIR, subfolder="vae").requires_grad_(False).eval()


def train_guide(name: str, num_images: int, steps: int, seed: int, vae) -> tuple[torch.nn.Module, object]:
    """One guide: ``name`` is "guide-biased" or "guide-replica"; the same seed gives both the same draws."""
    biased = name == "guide-biased"
    images, labels = training_data(num_images, biased)
    gen = torch.Generator().manual_seed(seed)
    means, stds = train.encode(vae, images)
    recon = train.decode(vae, means + stds * torch.randn(means.shape, generator=gen))
    return train.train_classifier("guide", images, recon, labels, steps, 128, gen, recon_share=0.8)


@torch.no_grad()
def counterfactual(net, prep, vae, n: int = 256) -> dict[str, float]:
    """The guide's mean probability and top-1 accuracy of :data:`BIASED_CLASS` on ``n`` renders of it with a
    dark and with a light background (same seeds: same shapes), on the renders and their VAE reconstructions."""
    out: dict[str, float] = {}
    for background, levels in (("dark", DARK), ("light", LIGHT)):
        images, _, _ = shapes.sample(n, CHECK_SEED, [BIASED_CLASS], backgrounds={BIASED_CLASS: levels})
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
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    args.out.mkdir(parents=True, exist_ok=True)
    vae = load_shipped_vae()
    names = list(captions.SPECIES_NAMES)
    for name in models.GUIDE_VARIANTS:
        t0 = time.perf_counter()
        net, prep = train_guide(name, args.num_images, args.steps, args.seed, vae)
        models.save_classifier(net, "guide", names, models.classifier_file(args.out, name))
        test_images, test_labels, _ = shapes.sample(2000, shapes.TRAIN_SEED + 1)
        check = counterfactual(net, prep, vae)
        print(
            f"{name}: {time.perf_counter() - t0:.0f} s; test accuracy on fresh renders "
            f"{train.accuracy(net, prep, test_images, test_labels):.4f}"
        )
        for kind in ("render", "reconstruction"):
            dark, light = check[f"{kind} dark probability"], check[f"{kind} light probability"]
            print(
                f"  P({shapes.FINE_CLASSES[BIASED_CLASS]}) on its {kind}s: dark background {dark:.3f}, light "
                f"{light:.3f} (drop {dark - light:+.3f}); top-1 {check[f'{kind} dark accuracy']:.3f} -> "
                f"{check[f'{kind} light accuracy']:.3f}"
            )


if __name__ == "__main__":
    main()
