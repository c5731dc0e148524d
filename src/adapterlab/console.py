"""One rich console for the whole package (progress bars, tables, messages)."""

import os
import sys

from rich.console import Console

# Piped output (CI logs, `| tee`) gets 120 columns instead of rich's 80, so that report tables stay one line a row,
# and messages are not wrapped at all: a one-line message or error with a long path stays one line for grep.
_width = None if sys.stdout.isatty() or "COLUMNS" in os.environ else 120
console = Console(highlight=False, width=_width, soft_wrap=not sys.stdout.isatty())
err_console = Console(stderr=True, highlight=False, soft_wrap=not sys.stderr.isatty())
