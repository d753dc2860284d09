"""Resumable asyncio batch runner for the TensorsLab Z-Image text-to-image API."""

__version__ = "0.1.0"
__all__ = ["__version__"]
