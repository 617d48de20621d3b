"""spkid: speaker recognition from raw audio to an error-rate report."""

__version__ = "0.1.0"
