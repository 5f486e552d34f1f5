"""The other masters of a multi-master site, reached through its WAMP router on slaveshell's own session: where each
worker is."""
