"""The engine: the pure decision step, its policy and rules, and the I/O around it (the tick)."""
