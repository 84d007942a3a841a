"""The core: futures, sessions, key layout and claim protocol. Pure Python, no SDK imports."""
