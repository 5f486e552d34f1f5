"""A copy's files on disk, sent and received alike by the operator's client and the worker: standard library
only."""
