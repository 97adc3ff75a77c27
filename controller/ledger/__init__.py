"""What the engine (which moves jobs) and the preflight (which checks and
creates them) both stand on: the lifecycle's states, reasons and gate
criteria, creating a job with its twin check, its history events, file
hashes and atomic writes, prices and the one cost formula, providers' end
dates, and the gate's files. It imports neither the engine nor the preflight."""
