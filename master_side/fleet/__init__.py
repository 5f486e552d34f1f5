"""Fleet runs: one command on many workers, each in an ordinary audited session (`run`), and the operations
the doors call (`operations`: runs, facts, the runs recorded)."""
