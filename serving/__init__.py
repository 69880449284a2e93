"""A TF-Serving-compatible model server for this project's SavedModels, and its client."""
