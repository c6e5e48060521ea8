"""The exceptions the local core raises for bad input: each message says what was wrong and what to do."""


class SchedcmpError(Exception):
    """A user-facing error: the CLI prints its message on one line and exits with code 1."""


class ConfigError(SchedcmpError, ValueError):
    """A configuration value or file that cannot be used."""


class UnknownSchedulerError(SchedcmpError, KeyError):
    """A scheduler name that is neither an alias, a preset nor a class name."""

    def __str__(self) -> str:
        # KeyError quotes its message; a user-facing error should read as a plain sentence.
        return str(self.args[0]) if self.args else ""


class ConfigWarning(UserWarning):
    """A configuration key that was ignored or adjusted."""


class WeightsError(SchedcmpError):
    """Model weights that are missing, corrupt, of the wrong shape, or refused (pickles without opt-in)."""


class NonFiniteError(SchedcmpError):
    """A computation that produced NaN or infinity (a diverging sampler, broken weights, fp16 overflow)."""


class MissingExtraError(SchedcmpError, ImportError):
    """An optional part of schedcmp whose extra is not installed (the message names the pip command)."""
