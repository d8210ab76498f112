"""PNG grid, baseline prompt vs DCT prompt: ``python -m dct.toy.grid --tokens DIR/tokens --out grid.png`` (or
``dct.fashion.grid``).

One row per class: ``--n`` baseline images ("A photo of a ember finch"), a gap, then ``--n`` DCT images
("A photo of <tok> ember finch") on the same evaluation seeds, so each column pair shares its noise.
Tokens come from ``python -m dct.<world>.evaluate`` (run 0 by default); classes default to those the
evaluation marked eligible (ceiling >= the world's ``ceiling_eligible`` by the evaluator).
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from torchvision.utils import make_grid, save_image

from dct.artifacts.token_file import load_token
from dct.config import baseline_prompts, epoch_prompts
from dct.method.sampling import generate
from dct.method.tokens import add_placeholder_token, set_token_vector
from dct.worlds import get_world
from dct.worlds.evaluate import load_world, parse_classes

logger = logging.getLogger(__name__)


def grid_image(pipe, config, class_names, tokens: dict[int, tuple[str, torch.Tensor]], n: int, upscale: int = 3):
    """Grid ``(3, H, W)`` float in [0, 1]: per class a row of n baseline | n DCT images (same seeds)."""
    seeds = list(config.evaluation.seeds)[:n]
    rows = []
    for cid, (token, vector) in tokens.items():
        token_id = add_placeholder_token(pipe.tokenizer, pipe.text_encoder, token, config.token.initializer_token)
        set_token_vector(pipe.text_encoder, token_id, vector)
        t = config.prompts.templates
        word = config.prompts.baseline_word
        base = generate(pipe, baseline_prompts(t, word, class_names[cid], n), seeds, config.sampler)
        dct = generate(pipe, epoch_prompts(t, token, class_names[cid], n), seeds, config.sampler)
        gap = torch.ones(1, *base.shape[1:])
        rows.append(torch.cat([base, gap, dct]))
    images = torch.cat(rows)
    images = F.interpolate(images, scale_factor=upscale, mode="nearest")
    return make_grid(images, nrow=2 * n + 1, padding=2, pad_value=1.0)


def main(argv: list[str] | None = None, world: str = "toy") -> None:
    w = get_world(world)
    p = argparse.ArgumentParser(prog=f"python -m dct.{w.name}.grid", description=__doc__.splitlines()[0])
    p.add_argument("--tokens", type=Path, required=True, help=f"tokens directory written by dct.{w.name}.evaluate")
    p.add_argument("--out", type=Path, default=Path(f"{w.name}-grid.png"))
    p.add_argument("--classes", default=None, help="e.g. '0-4'; default: eligible classes in ../results.json")
    p.add_argument("--run", type=int, default=0)
    p.add_argument("--n", type=int, default=8, help="images per side")
    p.add_argument(
        "--weights", type=Path, default=None, help=f"a `dct.{w.name}.train --out` directory (default: shipped)"
    )
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(2)
    spec = w.dataset(args.weights)
    config = spec.run_config()
    if args.classes:
        class_ids = parse_classes(args.classes, w.num_classes)
    else:
        summary = json.loads((args.tokens.parent / "results.json").read_text())
        class_ids = [c["class_id"] for c in summary["classes"] if c["ceiling"]["evaluator"] >= w.ceiling_eligible]
    pipe, _, _ = load_world(spec)
    tokens = {}
    for cid in class_ids:
        token, vector, _ = load_token(args.tokens / f"r{args.run}-{cid:05d}.safetensors")
        tokens[cid] = (token, vector)
    save_image(grid_image(pipe, config, spec.class_names, tokens, args.n), args.out.resolve())
    logger.info(
        "wrote %s: rows = classes %s; left %d baseline, right %d DCT", args.out.resolve(), class_ids, args.n, args.n
    )


if __name__ == "__main__":
    main()
