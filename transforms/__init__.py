"""Reusable Beam transforms of rtfeatures: decode, features, late data, sink."""
