"""nixlog: an industrial Modbus data logger for Raspberry Pi-class gateways.

Polls Modbus devices, buffers every reading in SQLite, ships readings to an HTTP API in
batches and prunes the oldest data so the disk never fills.
"""

from nixlog.errors import (
    ApiError,
    ConfigError,
    DatabaseError,
    DeviceError,
    NixlogError,
    UsageError,
)

__version__ = "0.1.0"

__all__ = [
    "ApiError",
    "ConfigError",
    "DatabaseError",
    "DeviceError",
    "NixlogError",
    "UsageError",
    "__version__",
]
