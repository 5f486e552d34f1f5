"""Suite-wide settings. Fuzz budgets: the default keeps the suite fast; SLAVESHELL_FUZZ=long runs the
property-based tests with large budgets (see docs/reliability.md).

Signals the suite was started with ignored are given back their default dispositions: the tests send Ctrl-C,
a hangup or a quit to the processes they start, which inherit an ignored signal (a suite started in the
background of a shell without job control, `cmd &` in a script, ignores SIGINT and SIGQUIT; `nohup` ignores
SIGHUP), and would then wait for nothing."""

import os
import signal

from hypothesis import HealthCheck, settings

settings.register_profile("default", max_examples=150, deadline=None,
                          suppress_health_check=[HealthCheck.function_scoped_fixture])
settings.register_profile("long", max_examples=5000, deadline=None,
                          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
settings.load_profile(os.environ.get("SLAVESHELL_FUZZ", "default"))

for _signum, _default in ((signal.SIGINT, signal.default_int_handler), (signal.SIGQUIT, signal.SIG_DFL),
                          (signal.SIGHUP, signal.SIG_DFL)):
    if signal.getsignal(_signum) == signal.SIG_IGN:
        signal.signal(_signum, _default)
