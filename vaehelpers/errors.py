"""The one-sentence errors: an error whose message says what went wrong and what to do, shown in a notebook as
that sentence alone. The lowest floor of the package: it imports nothing from it."""


class OneSentenceError(Exception):
    """Base of the errors whose message is one sentence; IPython shows ``Name: sentence``, without a traceback.
    A subclass keeps its other base for those who catch it (``class ParameterError(OneSentenceError, ValueError)``)."""

    def _render_traceback_(self) -> list[str]:
        return [f"{type(self).__name__}: {self}"]
