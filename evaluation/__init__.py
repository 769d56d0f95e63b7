"""Evaluation: batch prediction, prediction files, blending models, and the metrics report."""
