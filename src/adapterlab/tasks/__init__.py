"""Tasks: one folder each, the same modules in each; the registry (adapterlab.registry) lists them."""
