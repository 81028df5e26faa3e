"""One exception type for user-facing problems: the CLI prints its message as one line."""


class AgentDistillError(Exception):
    """A problem the user can fix; the message names the problem and the fix."""


class ConfigError(AgentDistillError):
    """A recipe, model id or option is invalid."""


class EnvNotReady(AgentDistillError):
    """An environment lacks a package, data, server or runtime it needs."""


class ModelError(AgentDistillError):
    """A model backend failed in a way retrying will not fix."""


class RunFailed(AgentDistillError):
    """A run finished, but more of its episodes ended in error than its recipe tolerates."""

    exit_code = 1
