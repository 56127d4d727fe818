"""What a retry cannot fix: the operator fails the task at once, without a retry."""


class CannotRun(ValueError):
    """This try can never work as given (a bad run param, an unavailable target, a spec the
    target refuses, something that cannot be pickled, an environment that cannot be built).
    The message says what to change."""
