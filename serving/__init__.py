"""Serving a trained model: the builder's decoding in graph ops, the SavedModel, the export."""
