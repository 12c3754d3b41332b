"""Trained models and checkpoints: where they are kept, what is kept, how they are served."""
