"""Where slaveshell meets Buildbot's and Twisted's own code."""
