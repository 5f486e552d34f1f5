"""The core of fleet runs (one command on many workers), sans-I/O and standard library only.

One concern per module: `nodeset` (ClusterShell's compact worker ranges), `outcome` (what happened to each
worker, its bounded output), `targets` (`--workers` and `--where` resolved against the fleet), `batch`
(`--batch` and the scheduler of a run), `gather` (identical outputs gathered, the summary line, the exit
status, the ``--json`` shape), `probe` (the facts probe and its parser) and `drift` (facts grouped by value,
with their age).
"""
