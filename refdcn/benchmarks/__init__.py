"""Benchmarks of refdcn against its peers (``refdcn bench``)."""
