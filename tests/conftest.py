"""Suite-wide settings. Fuzz budgets: the default keeps the suite fast; SLAVESHELL_FUZZ=long runs the
property-based tests with large budgets (see docs/reliability.md)."""

import os

from hypothesis import HealthCheck, settings

settings.register_profile("default", max_examples=150, deadline=None,
                          suppress_health_check=[HealthCheck.function_scoped_fixture])
settings.register_profile("long", max_examples=5000, deadline=None,
                          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
settings.load_profile(os.environ.get("SLAVESHELL_FUZZ", "default"))
