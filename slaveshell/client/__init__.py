"""The operator's tools (`buildbot-shell`, `slaveshell ...`): standard library only (besides prompt_toolkit for the
console), no Twisted (tests/test_layers.py)."""
