"""The engine: states, the pure decision step, policy, and the I/O around it."""
