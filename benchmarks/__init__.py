"""Benchmarks behind `./run bench …`: figures for the README, ratios against baselines measured in the
same run. They print; they never assert, so they cannot flake. Not part of the product package."""
