"""The simulated provider: a local service with its own state file."""
