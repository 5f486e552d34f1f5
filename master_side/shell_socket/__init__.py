"""The shell socket's door: connections on the master's UNIX socket, their frames, and a session's or a copy's
messages to the client."""
