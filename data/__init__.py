"""Dataset conversion tools: videos (or the synthetic generator) -> pre-decoded JPEG-frame ArrayRecord shards."""
