"""The edge node: serve variants from a two-tier cache, fill misses from the origin, verified."""
