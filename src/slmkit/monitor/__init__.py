"""Drift monitoring: `slm monitor` re-evaluates a served model and alerts when its main metric drops."""
