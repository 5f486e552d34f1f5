"""What an operator may ask of the master, whatever door they come in by, and the bounds on what one operator can
make the master hold."""
