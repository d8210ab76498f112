"""Each built-in attribute on images built with known values gives the expected sign and size."""

from __future__ import annotations

import pytest
import torch

from dct.probe.attributes import ATTRIBUTE_EXTRACTORS, HUE_BINS, classifier_attributes, resolve_attributes

H = W = 32


def canvas(background: float, n: int = 3) -> torch.Tensor:
    return torch.full((n, 3, H, W), background)


def with_square(images: torch.Tensor, top: int, left: int, size: int = 8, colour=(1.0, 1.0, 1.0)) -> torch.Tensor:
    out = images.clone()
    out[:, :, top : top + size, left : left + size] = torch.tensor(colour).view(1, 3, 1, 1)
    return out


def attr(name: str, images: torch.Tensor) -> torch.Tensor:
    return ATTRIBUTE_EXTRACTORS[name](images)[:, 0]


def test_brightness_and_border_follow_the_background():
    dark, light = canvas(0.1), canvas(0.8)
    assert torch.allclose(attr("brightness", dark), torch.tensor(0.1))
    assert torch.allclose(attr("border_brightness", light) - attr("border_brightness", dark), torch.tensor(0.7))
    # A bright shape in the centre on a dark background: the border stays dark, the centre is brighter.
    shape = with_square(dark, 12, 12)
    assert torch.allclose(attr("border_brightness", shape), torch.tensor(0.1))
    assert (attr("border_contrast", shape) < -0.2).all()
    assert (attr("border_contrast", with_square(light, 12, 12, colour=(0.0, 0.0, 0.0))) > 0.2).all()


def test_saturation_colourfulness_and_hue_bins():
    grey = canvas(0.5)
    blue = grey.clone()
    blue[:, 2] = 1.0
    blue[:, :2] = 0.0
    assert torch.allclose(attr("saturation", grey), torch.tensor(0.0))
    assert torch.allclose(attr("saturation", blue), torch.tensor(1.0))
    # Uniform pure blue: rg = 0, yb = -1, no spread → 0.3 · 1 / (1.3 √2); a grey image has none.
    assert torch.allclose(attr("colourfulness", grey), torch.tensor(0.0))
    assert torch.allclose(attr("colourfulness", blue), torch.tensor(0.3 / (1.3 * 2**0.5)))
    half = blue.clone()
    half[:, :, :, : W // 2] = torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1)  # red | blue: large spread
    assert (attr("colourfulness", half) > attr("colourfulness", blue) + 0.2).all()
    assert (attr("colourfulness", half) <= 1.0).all()
    # A red square covering 64 of 1024 pixels: red share 1/16, every other hue 0, grey has no hue.
    red = with_square(grey, 4, 4, colour=(1.0, 0.0, 0.0))
    for h in HUE_BINS:
        expected = 64 / (H * W) if h == "red" else 0.0
        assert torch.allclose(attr(f"hue_{h}", red), torch.tensor(expected)), h
    assert torch.allclose(attr("hue_blue", blue), torch.tensor(1.0))
    # Bins are centred on their name: 345° (a bluish red) is red, 45° (orange-yellow) is yellow.
    for colour, name in (((1.0, 0.0, 0.25), "red"), ((1.0, 0.75, 0.0), "yellow")):
        img = with_square(grey, 4, 4, colour=colour)
        assert torch.allclose(attr(f"hue_{name}", img), torch.tensor(64 / (H * W))), (colour, name)


def test_salient_region_moves_with_the_shape():
    centre = with_square(canvas(0.2), 12, 12)
    corner = with_square(canvas(0.2), 0, 24)  # top-right corner
    assert torch.allclose(attr("salient_x", centre), torch.tensor(0.5), atol=0.02)
    assert torch.allclose(attr("salient_y", centre), torch.tensor(0.5), atol=0.02)
    assert (attr("salient_x", corner) > 0.8).all() and (attr("salient_y", corner) < 0.2).all()
    big = with_square(canvas(0.2), 4, 4, size=24)
    assert (attr("salient_spread", big) > attr("salient_spread", centre) + 0.1).all()
    # A flat image has no salient region: centre of the frame, not NaN.
    flat = attr("salient_x", canvas(0.5))
    assert torch.isfinite(flat).all() and torch.allclose(flat, torch.tensor(0.5))


def test_classifier_as_attribute_source(tiny_clf):
    images = torch.rand(5, 3, 16, 16)
    ex = classifier_attributes(tiny_clf, "guide", batch_size=2)
    probs = ex(images)
    assert probs.shape == (5, tiny_clf.num_classes)
    assert ex.names == tuple(f"guide:{label}" for label in tiny_clf.labels)
    assert torch.allclose(probs.sum(1), torch.ones(5), atol=1e-5)
    assert torch.allclose(probs, tiny_clf(images).softmax(-1), atol=1e-6)


@pytest.mark.parametrize(
    "bad",
    [
        torch.rand(2, 1, 8, 8),
        torch.rand(3, 8, 8),
        (torch.rand(2, 3, 8, 8) * 255).to(torch.uint8),
        torch.rand(2, 3, 2, 2),
    ],
)
def test_bad_images_fail_with_a_value_error(bad):
    with pytest.raises(ValueError, match="images"):
        ATTRIBUTE_EXTRACTORS["brightness"](bad)


def test_unknown_attribute_names_the_valid_ones():
    with pytest.raises(ValueError, match="brightness"):
        resolve_attributes(["brightnes"])
    assert [e.name for e in resolve_attributes(["saturation", "brightness"])] == ["saturation", "brightness"]
    assert len(resolve_attributes(None)) == len(ATTRIBUTE_EXTRACTORS)


def test_own_label_is_left_out_when_labels_are_the_classes(tiny_clf):
    """The guide's own label is what the token was optimised for; the probe asks about the OTHER labels."""
    import datetime as dt

    from dct.probe.probe import probe_values
    from dct.probe.samples import PairedSamples
    from dct.results import ClassRecord, Provenance

    now = dt.datetime.now(dt.UTC)
    prov = Provenance(diffusion_model_id="t", diffusion_revision="r", classifier_model_id="t", classifier_revision="r",
                      device="cpu", dtype="float32")
    rec = ClassRecord(run_id="r1", dataset="tiny", class_id=2, class_name="c2", token="<c>", token_key="t",
                      eval_key="e", status="done", provenance=prov, started_at=now, finished_at=now)
    torch.manual_seed(0)
    pairs = {2: [PairedSamples(rec, tuple(range(6)), torch.rand(6, 3, 16, 16), torch.rand(6, 3, 16, 16))]}
    guide = classifier_attributes(tiny_clf, "guide", labels_are_classes=True)
    other = classifier_attributes(tiny_clf, "scene")
    rows = probe_values(pairs, [guide, other], top_labels=10, num_bootstrap=200).table.to_pylist()
    names = {r["attribute"] for r in rows}
    assert "guide:class 2" not in names and {"guide:class 0", "guide:class 1", "guide:class 3"} <= names
    assert "scene:class 2" in names  # another classifier's label 2 is not this dataset's class 2


def test_attribute_names_images_means_every_built_in_and_no_classifier():
    from dct.probe.probe import CLASSIFIER_SOURCES, parse_attribute_names

    assert parse_attribute_names("images") == list(ATTRIBUTE_EXTRACTORS)
    assert parse_attribute_names("images,evaluator") == [*ATTRIBUTE_EXTRACTORS, "evaluator"]
    assert parse_attribute_names("all") == [*ATTRIBUTE_EXTRACTORS, *CLASSIFIER_SOURCES]
    with pytest.raises(ValueError, match=r"'image'.*'images'"):
        parse_attribute_names("image")
