"""TideMQ: MQTT 3.1/3.1.1/5.0 broker, real-time messaging gateway and asyncio client."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
