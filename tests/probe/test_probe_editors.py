"""Attribute editors: each moves its own attribute by the requested amount, and the others (outside its declared
coupled set) by less than half of it — measured on toy renders, the images the probe sees on the toy world."""

from __future__ import annotations

import pytest
import torch

from dct.probe.attributes import ATTRIBUTE_EXTRACTORS
from dct.probe.editors import ATTRIBUTE_EDITORS, OTHERS_BOUND
from dct.toy import shapes

AMOUNT = 0.06
TOLERANCE = 0.005  # the bisection's, in the attribute's units


@pytest.fixture(scope="module")
def renders() -> torch.Tensor:
    return shapes.sample(24, 4242)[0].float()  # every class, random backgrounds, sizes and positions


def _values(images: torch.Tensor) -> dict[str, torch.Tensor]:
    return {name: ex(images)[:, 0] for name, ex in ATTRIBUTE_EXTRACTORS.items()}


def test_every_builtin_statistic_has_an_editor():
    assert set(ATTRIBUTE_EDITORS) == set(ATTRIBUTE_EXTRACTORS)
    for name, editor in ATTRIBUTE_EDITORS.items():
        assert editor.attribute == name and name not in editor.coupled
        assert set(editor.coupled) <= set(ATTRIBUTE_EXTRACTORS)


# A hue share can only fall where the hue is: the toy's objects are red or blue, so only those two go down.
CASES = [(n, a) for n in ATTRIBUTE_EDITORS for a in (AMOUNT, -AMOUNT) if a > 0 or n not in {
    "hue_yellow", "hue_green", "hue_cyan", "hue_magenta"}]


@pytest.mark.parametrize(("name", "amount"), CASES, ids=[f"{n}{a:+}" for n, a in CASES])
def test_editor_moves_its_attribute_by_the_amount_and_little_else(renders, name, amount):
    editor = ATTRIBUTE_EDITORS[name]
    before = _values(renders)
    edited, reached = editor(renders, amount)
    after = _values(edited)
    change = after[name] - before[name]
    assert torch.allclose(reached, change, atol=1e-5)  # what it reports is what the extractor measures
    on_target = (change - amount).abs() <= TOLERANCE
    # Some images cannot move that far (a hue share cannot fall below 0; a shape at the edge cannot move on).
    assert on_target.float().mean() >= 0.5, f"{name} {amount:+}: only {on_target.float().mean():.0%} on target"
    assert (change[on_target].mean() - amount).abs() <= TOLERANCE
    for other in set(ATTRIBUTE_EXTRACTORS) - {name, *editor.coupled}:
        moved = (after[other] - before[other]).abs().mean().item()
        assert moved < OTHERS_BOUND * abs(amount), f"{name} {amount:+} moved {other} by {moved:.3f}"


def test_zero_amount_leaves_the_images_unchanged(renders):
    for editor in ATTRIBUTE_EDITORS.values():
        edited, reached = editor(renders, 0.0)
        assert torch.equal(edited, renders.clamp(0, 1)) and not reached.any()


def test_bad_amount_is_refused(renders):
    with pytest.raises(ValueError, match="amount nan must be a finite number"):
        ATTRIBUTE_EDITORS["brightness"](renders, float("nan"))
