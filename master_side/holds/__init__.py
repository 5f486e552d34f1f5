"""Builds held by `HoldForShell` for an operator to step into, their deadlines, and the notices Buildbot's reporters
deliver."""
