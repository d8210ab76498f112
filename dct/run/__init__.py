"""One run: plan, the per-class runner, publish: what tasks/ call."""
