"""A training run: the loop, its set-up, the train and eval steps, optimiser and learning rate,
data parallelism, checkpoints, metrics, the workdir lock, signals and divergence."""
