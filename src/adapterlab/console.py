"""One rich console for the whole package (progress bars, tables, messages)."""

import os
import sys

from rich.console import Console

# Piped output (CI logs, `| tee`) gets 120 columns instead of rich's 80, so that report tables stay one line a row.
_width = None if sys.stdout.isatty() or "COLUMNS" in os.environ else 120
console = Console(highlight=False, width=_width)
err_console = Console(stderr=True, highlight=False)
