"""The model registry: every run and export is a version; aliases point at versions."""
