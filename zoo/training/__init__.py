"""Training: optimizer and schedule, the step loop, checkpoints and resume, metrics and progress.

`zoo.training.loop` (which imports keras) holds the loop; `zoo.training.config` the settings.
"""
