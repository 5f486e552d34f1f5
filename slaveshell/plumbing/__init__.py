"""The Twisted and PB plumbing that only the master and the worker use."""
