"""Test plugin (issue 18): methods that misbehave in ways a sweep must survive.

``exits`` calls ``sys.exit(3)`` from its loss, as a careless plugin or a library might; the
sweep must record that cell as failed and go on. ``nan-rewards`` is DPO whose loss stays
finite while its implicit rewards are NaN from the first step: the cell must fail as a
numerical fault, not finish with a reward accuracy of 0.0.
"""
from __future__ import annotations

import sys

import methods
from methods.dpo import DPO


@methods.register("exits")
class Exits(DPO):
    """DPO that exits the process from its first loss call."""

    def loss(self, b):
        sys.exit(3)


@methods.register("nan-rewards")
class NanRewards(DPO):
    """DPO with NaN implicit rewards and a finite loss."""

    def loss(self, b):
        out = super().loss(b)
        out.chosen_rewards = out.chosen_rewards * float("nan")
        return out
