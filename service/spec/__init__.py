"""The spec language: what a study asks for, read from JSON or YAML, checked before it runs."""
