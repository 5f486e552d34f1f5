"""`slaveshell.policy`: a public name (master.cfg imports it); the code is slaveshell.vocabulary.policy."""

from slaveshell.vocabulary.policy import (
    CLUSTER_PREFIX,
    IMPLIED,
    RIGHTS,
    WEB_PREFIX,
    Action,
    ClusterIdentity,
    Decision,
    Identity,
    Operator,
    Policy,
    Rule,
    SessionView,
    WebIdentity,
    in_moderators,
    same_operator,
    same_person,
)

__all__ = ["RIGHTS", "IMPLIED", "Action", "Operator", "SessionView", "Identity", "WEB_PREFIX", "WebIdentity",
    "CLUSTER_PREFIX", "ClusterIdentity",
    "same_operator", "same_person", "in_moderators", "Rule", "Decision", "Policy"]
