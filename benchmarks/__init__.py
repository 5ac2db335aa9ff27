"""Benchmarks of ReplayForge, each beside a baseline measured in the same run."""
