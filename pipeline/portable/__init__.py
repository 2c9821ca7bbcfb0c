"""Exactly the code an MLflow model ships (its `code_paths`): a model folder as a classifier of raw
pixels, the preprocessing it was trained with, and LeNet-5 classic's custom layers.

It imports nothing else from the project (relative imports only), so a client without the project
loads every model; pipeline/tracking/export.py copies this folder whole into the logged model.
"""
