"""Evaluation: batched generation now; metrics and the base-vs-adapter report build on it."""
