"""``torch.compile`` for a classifier's frozen encoders (the fine-tuned model, the embedding part's encoder).

Inductor with frozen weights (pre-packed for oneDNN on a CPU) and plain matmul attention, which inductor fuses;
the CPU SDPA kernel stays an opaque call that is slow at these lengths (the review classifier: 410 vs 341
examples/s compiled). Compiling happens lazily, on the first batch; if it fails there (no C++ compiler, an
unsupported op) the caller switches back to the eager model for good, with a warning.
"""

from __future__ import annotations

from typing import Any

from adapterlab.console import console

# Graphs one compiled encoder may need: a text alone (no mask), a padded batch, an unpadded batch, and room to spare.
GRAPHS_PER_MODEL = 4
_compiled_models = 0


def compile_frozen(model: Any) -> tuple[Any, str | None]:
    """(the compiled model, the attention implementation to restore on falling back)."""
    import torch
    import torch._dynamo.config as dynamo
    import torch._inductor.config as inductor

    global _compiled_models
    inductor.freezing = True
    # Encoders of one architecture share their forward's graph cache, and frozen weights make each model's graphs
    # its own: with dynamo's default limit of 8 the third compiled encoder of a server (a classifier ships two)
    # silently ran its later shapes eagerly.
    _compiled_models += 1
    dynamo.recompile_limit = max(dynamo.recompile_limit, GRAPHS_PER_MODEL * _compiled_models)
    attention = getattr(model.config, "_attn_implementation", None)
    if attention == "sdpa" and hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation("eager")
    return torch.compile(model, dynamic=True), attention


def back_to_eager(eager: Any, attention: str | None, error: Exception) -> Any:
    """The eager model again, its attention as before compiling, after a compiler failure (said once)."""
    console.print(f"[yellow]warning:[/] torch.compile failed ({type(error).__name__}); predicting eagerly")
    if attention == "sdpa" and hasattr(eager, "set_attn_implementation"):
        eager.set_attn_implementation("sdpa")
    return eager
