"""Compression experiments (prune, share, quantize) as resumable functions of a config."""
