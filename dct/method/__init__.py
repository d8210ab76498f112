"""The algorithm: tensors in, tensors out; no store, no environment (docs/design.md, "Layers")."""
