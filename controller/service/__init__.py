"""Operating ftctl as a service: the daemon, systemd notify, metrics, logs, doctor."""
