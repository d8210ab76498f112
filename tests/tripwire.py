"""A tripwire on every third-party weight loader: a test that must load no model proves it with this.

Patched at the third-party entry points (not at ``dct`` names, which modules may have imported earlier
under their own names), so it fires whichever ``dct`` code path reaches a loader.
"""

from __future__ import annotations


class ModelLoaded(AssertionError):
    """Raised by the tripwire: a model was about to be read."""


def arm(monkeypatch) -> None:
    """Every way the product loads weights goes through one of these entry points."""
    import diffusers
    import timm
    import torch
    import transformers

    def boom(*args, **kwargs):
        raise ModelLoaded("a model was loaded where none may be")

    for owner, name in loaders(diffusers, transformers, timm, torch):
        monkeypatch.setattr(owner, name, boom)


def loaders(diffusers, transformers, timm, torch) -> tuple[tuple[object, str], ...]:
    """The entry points: pipelines, single diffusers models (``AutoencoderKL``, ``UNet2DConditionModel``: the
    ``ModelMixin`` base), transformers models and tokenizers, timm, and any state dict or pickle read."""
    return (
        (diffusers.DiffusionPipeline, "from_pretrained"),
        (diffusers.StableDiffusionPipeline, "from_pretrained"),
        (diffusers.StableDiffusionXLPipeline, "from_pretrained"),
        (diffusers.ModelMixin, "from_pretrained"),
        (transformers.PreTrainedModel, "from_pretrained"),
        (transformers.AutoModelForImageClassification, "from_pretrained"),
        (transformers.PreTrainedTokenizerBase, "from_pretrained"),
        (timm, "create_model"),
        (torch.nn.Module, "load_state_dict"),
        (torch, "load"),
    )
