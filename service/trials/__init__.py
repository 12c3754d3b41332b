"""Trials from a worker's side: reserving one, recording its outcome, failing stale ones."""
