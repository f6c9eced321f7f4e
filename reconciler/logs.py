"""Debug lines (``-v``) without importing logging where nothing could show them.

``debug(__name__, "... %s", value)`` logs at debug level on the module's logger, as
``logging.getLogger(__name__).debug`` does, but only once logging is imported: until
then there is no handler that could show the line (``-v`` imports logging to add one,
and so does a program that uses reconciler as a library and configures logging). A
plan's start-up is spared the import of logging and of what it imports (traceback,
textwrap, string): 5 ms.
"""

from __future__ import annotations

import sys
from typing import Any


def debug(name: str, message: str, *args: Any) -> None:
    if "logging" in sys.modules:
        import logging  # (waits while another thread is still importing it)

        logging.getLogger(name).debug(message, *args)
