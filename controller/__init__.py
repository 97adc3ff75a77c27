"""ftctl.controller: what ftctl does with jobs, in four rooms.

- `engine`: the lifecycle, the pure decision step (`decide`), retry and
  budget policy, the I/O shell around the step (`tick`) and job writes;
- `preflight`: dataset checks, `prepare`, prices and estimates, submissions;
- `cli`: the `ftctl` command line (one typer app that commands register on);
- `service`: running it as a daemon (notify, metrics, logs, doctor, unit).
"""
