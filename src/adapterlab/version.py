"""The package version, in a module of its own so that any module can read it without importing the package
root (whose lazy verb table points at the stages: a core module importing it would point upwards)."""

__version__ = "0.1.0"
