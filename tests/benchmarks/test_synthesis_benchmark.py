"""The synthesis benchmark compares like with like: both paths make the same images from the same seeds."""

from __future__ import annotations


def test_batched_and_per_prompt_paths_make_the_same_images():
    from benchmarks.synthesis import main

    result = main(["--preset", "toy", "--images", "3", "--batch-size", "2", "--repeats", "1"])
    assert result["max_abs_pixel_difference"] < 1e-4
    assert result["batched_images_per_s"] > 0 and result["per-prompt_images_per_s"] > 0
