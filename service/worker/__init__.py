"""The worker process and its parts: the trial loop, training, heartbeat, signals, ranks."""
