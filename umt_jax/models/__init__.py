"""Flax linen models: the video ViT student and its heads, and CLIP (teacher)."""
