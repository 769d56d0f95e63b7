"""Serving a trained model: image bytes decoded in the graph by the builder's rules, and the SavedModel export."""
