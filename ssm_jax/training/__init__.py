"""Train state, device mesh, checkpoints, the shared loop, and the per-task steps behind train.py / eval.py."""
