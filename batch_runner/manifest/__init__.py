"""Manifests: reading YAML/CSV/JSONL rows, checking fields, deriving job identity.

Pure and streaming: nothing here touches the network or the run directory.
"""
