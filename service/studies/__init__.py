"""Studies: what changes them, what is read of them, and the rules of their lifecycle."""
