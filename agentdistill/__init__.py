"""agentdistill: distill what strong agents do into things cheap agents can use."""

__version__ = "0.1.0"
