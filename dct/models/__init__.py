"""Models: hub access, the classifier interface and loaders, preprocessing, pipelines, labels, datasets."""
