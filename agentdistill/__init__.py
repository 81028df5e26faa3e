"""agentdistill: distill what strong agents do into things cheap agents can use."""

__version__ = "0.1.0"

from agentdistill.secrets import install_log_filter as _install_log_filter  # noqa: E402

_install_log_filter()  # library use too: no key the process was given reaches any log line
