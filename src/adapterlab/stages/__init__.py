"""Stages: the drivers that read top to bottom and ask the task (prepare, train, evaluate, run)."""
