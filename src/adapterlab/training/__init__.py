"""Training pieces every task builds its trainer from: arguments, callbacks, checkpoints, losses, samplers."""
