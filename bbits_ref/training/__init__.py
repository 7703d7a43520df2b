"""Training: the configuration, the trainer, checkpoints and the files a run writes."""
