"""Image features: the timm encoder, its pretrained weights, and the on-disk feature cache."""
