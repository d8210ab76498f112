"""The intervention test: does the guide's probability of the class follow the attribute alone?

A significant shift says the DCT images differ from the baseline images in an attribute; it does not say that
the guide cares about that attribute (a side effect of the token can shift too). The test edits ONLY that
attribute (:mod:`dct.probe.editors`) and asks the guide (docs/probe.md "The intervention test"):

- forward: the baseline images moved by the measured shift (toward the DCT value) — does P(class) rise?
- backward: the DCT images moved back by it — does P(class) fall?

Per run r and seed s the effect is the mean of the two changes; its interval is the probe's two-way bootstrap
over runs and seeds (:func:`dct.probe.stats.paired_shifts`). A finding is ``confirmed`` when the interval's low
end exceeds ``min_effect`` (the token raised P(class), so the attribute must push it the same way), else
``not confirmed``; an attribute without an editor is ``not testable``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from dct.probe.editors import AttributeEditor
from dct.probe.stats import DEFAULT_BOOTSTRAP, DEFAULT_CONFIDENCE, paired_shifts

# The smallest change in the guide's probability of the class (0–1) that counts as following the attribute.
DEFAULT_MIN_EFFECT = 0.05

CONFIRMED = "confirmed"
NOT_CONFIRMED = "not confirmed"
NOT_TESTABLE = "not testable"


@dataclass(frozen=True)
class InterventionResult:
    """One significant shift's intervention (probabilities and effects on a 0–1 scale).

    Attributes:
        verdict: :data:`CONFIRMED` or :data:`NOT_CONFIRMED`.
        effect: mean over runs and seeds of (forward + backward) / 2.
        ci_low, ci_high: its bootstrap interval (runs and seeds resampled).
        forward: mean P(class | baseline moved by the shift) − P(class | baseline).
        backward: mean P(class | DCT) − P(class | DCT moved back by the shift).
        reached: the share of the requested move the edits achieved (mean over both directions; 1 = all).
    """

    verdict: str
    effect: float
    ci_low: float
    ci_high: float
    forward: float
    backward: float
    reached: float


@dataclass(frozen=True)
class RequestedEdit:
    """An intervention asked for by name (``dct probe --edit [CLASS:]ATTRIBUTE=AMOUNT``): move ``attribute`` by
    ``amount`` on the classes ``class_id`` (None = every probed class), whether or not it shifted significantly —
    e.g. to ask another guide whether it follows the edit a biased guide's tokens made."""

    attribute: str
    amount: float
    class_id: int | None = None


def parse_edit(text: str, editors) -> RequestedEdit:
    """``"[CLASS:]ATTRIBUTE=AMOUNT"`` → a :class:`RequestedEdit`.

    Raises:
        ValueError: bad syntax, an attribute without an editor, an amount that is 0 or not a number.
    """
    head, sep, amount_text = text.partition("=")
    prefix, colon, rest = head.partition(":")
    # A class id is a leading integer; a classifier label's attribute ("guide:red circle") has a colon too.
    class_id, attribute = (int(prefix), rest.strip()) if colon and prefix.strip().isdigit() else (None, head.strip())
    try:
        amount = float(amount_text)
    except ValueError:
        amount = float("nan")
    if not sep or not attribute or not math.isfinite(amount) or amount == 0:
        raise ValueError(
            f"--edit {text!r}: write [CLASS:]ATTRIBUTE=AMOUNT with a non-zero amount in the attribute's units, "
            "e.g. 1:border_brightness=-0.3"
        )
    if attribute not in editors:
        raise ValueError(f"--edit {text!r}: attribute {attribute!r} has no editor; choose from {sorted(editors)}")
    return RequestedEdit(attribute, amount, class_id)


def check_min_effect(min_effect: float) -> float:
    """Raises ValueError unless ``min_effect`` lies in [0, 1)."""
    if not 0.0 <= min_effect < 1.0:
        raise ValueError(f"min_effect {min_effect!r} must be within [0, 1), e.g. 0.05 (a change in probability)")
    return min_effect


def intervene(
    baseline: Sequence[torch.Tensor],
    dct: Sequence[torch.Tensor],
    editor: AttributeEditor,
    shift: float,
    probability: Callable[[torch.Tensor], torch.Tensor],
    *,
    unedited: tuple[Sequence[torch.Tensor], Sequence[torch.Tensor]] | None = None,
    min_effect: float = DEFAULT_MIN_EFFECT,
    num_bootstrap: int = DEFAULT_BOOTSTRAP,
    confidence: float = DEFAULT_CONFIDENCE,
    seed: int = 0,
) -> InterventionResult:
    """Test one shift by intervention.

    Args:
        baseline, dct: per run, the class's ``(S, 3, H, W)`` images in [0, 1], paired by seed.
        editor: the attribute's editor.
        shift: the measured shift DCT − baseline (the attribute's units); the edit's amount.
        probability: images → ``(B,)`` the guide's probability of the class.
        unedited: per run, ``probability`` of the baseline and of the DCT images, if already computed.
        min_effect: the margin the interval's low end must exceed for :data:`CONFIRMED`.

    Raises:
        ValueError: no runs, runs of different sizes, a bad ``min_effect``.
    """
    check_min_effect(min_effect)
    if not baseline or len(baseline) != len(dct):
        raise ValueError(f"{len(baseline)} baseline and {len(dct)} DCT runs: pass the same runs of both variants")
    if shift == 0:
        raise ValueError("shift 0: nothing to move; the intervention tests significant shifts only")
    p_base, p_dct = unedited or ([probability(b) for b in baseline], [probability(d) for d in dct])
    before, after, reached, forward, backward = [], [], [], [], []
    for b, d, pb, pd in zip(baseline, dct, p_base, p_dct, strict=True):
        moved_b, got_b = editor(b, shift)
        moved_d, got_d = editor(d, -shift)
        p_moved_b, p_moved_d = probability(moved_b), probability(moved_d)
        forward.append((p_moved_b - pb).mean().item())
        backward.append((pd - p_moved_d).mean().item())
        # Paired by seed: "before" = P at the attribute's baseline value, "after" = P at its DCT value.
        before.append(((pb + p_moved_d) / 2).numpy())
        after.append(((p_moved_b + pd) / 2).numpy())
        reached.append(((got_b / shift + got_d / -shift) / 2).numpy())
    st = paired_shifts(
        np.stack(before)[..., None],
        np.stack(after)[..., None],
        num_bootstrap=num_bootstrap,
        confidence=confidence,
        seed=seed,
    )
    low = float(st.ci_low[0])
    return InterventionResult(
        verdict=CONFIRMED if low > min_effect else NOT_CONFIRMED,
        effect=float(st.shift[0]),
        ci_low=low,
        ci_high=float(st.ci_high[0]),
        forward=float(np.mean(forward)),
        backward=float(np.mean(backward)),
        reached=float(np.mean(reached)),
    )
