"""The input pipeline: datasets as sources, the global example order, augmentation and its draws,
test views (10-crop, multi-scale), the mean image."""
