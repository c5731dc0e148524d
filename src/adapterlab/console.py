"""One rich console for the whole package (progress bars, tables, messages)."""

from rich.console import Console

console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)
