"""What the client, the master and the worker say to each other, shared by all three: typed events, their encoders
and checks, without I/O and without Twisted."""
