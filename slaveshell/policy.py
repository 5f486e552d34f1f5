"""`slaveshell.policy`: a public name (master.cfg imports it); the code is slaveshell.vocabulary.policy."""

from slaveshell.vocabulary.policy import (
    IMPLIED,
    RIGHTS,
    WEB_PREFIX,
    Action,
    Decision,
    Identity,
    Operator,
    Policy,
    Rule,
    SessionView,
    WebIdentity,
    same_operator,
)

__all__ = ["RIGHTS", "IMPLIED", "Action", "Operator", "SessionView", "Identity", "WEB_PREFIX", "WebIdentity",
    "same_operator", "Rule", "Decision", "Policy"]
