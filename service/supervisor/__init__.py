"""The supervisor: keeps each study's workers as its row says."""
