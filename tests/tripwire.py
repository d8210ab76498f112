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

    for owner, name in (
        (diffusers.DiffusionPipeline, "from_pretrained"),
        (diffusers.StableDiffusionPipeline, "from_pretrained"),
        (transformers.PreTrainedModel, "from_pretrained"),
        (transformers.AutoModelForImageClassification, "from_pretrained"),
        (timm, "create_model"),
        (torch.nn.Module, "load_state_dict"),
    ):
        monkeypatch.setattr(owner, name, boom)
