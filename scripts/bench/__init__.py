"""Benchmarks, run against their anchors in the same run and reported as ratios."""
