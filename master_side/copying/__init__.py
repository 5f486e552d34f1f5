"""`slaveshell cp` on the master: a copy relayed between client and worker, and its record."""
