"""ftctl: LLM fine-tuning jobs on hosted providers as persistent state machines."""

__version__ = "0.2.0"
