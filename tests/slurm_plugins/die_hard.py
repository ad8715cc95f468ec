"""A method whose first loss call kills its own process with SIGKILL (a job that dies hard:
no exception, no status written by the job itself)."""
import os
import signal

import methods
from methods import LossOutput, PreferenceMethod, TokenBatch


@methods.register("die-hard")
class DieHard(PreferenceMethod):
    """Kills its own process at the first loss call (test-only)."""

    needs = frozenset()

    def loss(self, b: TokenBatch) -> LossOutput:
        os.kill(os.getpid(), signal.SIGKILL)
        raise AssertionError("unreachable")
