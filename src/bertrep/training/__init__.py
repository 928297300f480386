"""One training run's parts: its config (`TrainConfig`), the encoder with task heads and
freezing, the frozen-prefix cache, the Accelerate loop and evaluation, the read-out on
probe sets and the MLflow Model a source run registers. The run itself is `bertrep.train`."""
