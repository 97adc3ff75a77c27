"""ftctl: the lifecycle, the reconcile loop, the daemon and the CLI."""

__version__ = "0.1.0"
