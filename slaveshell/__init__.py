"""slaveshell: interactive shells into Buildbot workers over their existing PB connection.

This package holds the shared core (protocol, flow control, escapes, policy) and the operator tools. Keep its
top level free of heavy imports: the worker imports the core too.
"""

__version__ = "0.1.0"
