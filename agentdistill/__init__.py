"""agentdistill: distill what strong agents do into things cheap agents can use."""

__version__ = "0.1.0"

import os as _os

# oneDNN's AMX kernels (Intel Xeons since Sapphire Rapids) block a bf16 matmul by its row count, so a
# sequence's greedy tokens would change with the batch it is decoded in; AVX512-BF16 kept batch invariance
# (models/batch_invariance.py) on the same machine. Read by oneDNN at its first use, so set before torch runs
# anything; a value the user set wins.
_os.environ.setdefault("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_BF16")

from agentdistill.secrets import install_log_filter as _install_log_filter  # noqa: E402

_install_log_filter()  # library use too: no key the process was given reaches any log line
