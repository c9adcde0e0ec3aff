"""m3edge: put a memory-augmented Mixture-of-Experts agent on Raspberry Pi and Jetson class devices.

Importing this package must not import torch: the device install has none. The torch reference
agent lives in ``m3edge.model`` and is imported only by host-side code.
"""

__version__ = "0.1.0"

from m3edge.config import MEMORY_TYPES, ModelConfig, preset  # noqa: E402,F401
from m3edge.errors import M3EdgeError, BadInput  # noqa: E402,F401
