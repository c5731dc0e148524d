"""``python -m adapterlab``: the CLI, so ``torchrun --nproc_per_node N -m adapterlab train RECIPE`` works."""

from adapterlab.cli import main

if __name__ == "__main__":
    main()
