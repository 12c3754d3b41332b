"""Route modules: HTTP only, one domain call each."""
