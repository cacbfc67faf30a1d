"""Distributed fine-tuning with Ray Train: datasets, architectures, the worker loop, export.

Importing this package loads neither TensorFlow nor Ray; `fer_batch.train.driver.train`
is the one entry point the CLI and ``jobs/train.py`` call.
"""
