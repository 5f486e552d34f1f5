"""Live sessions as the master holds them: the session itself, its states and clocks, the registry, and the worker's
link."""
