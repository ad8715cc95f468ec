"""Suites: read a YAML suite onto the schema, check all of it, expand it into a plan of cells.

One job per module; each imports only modules above it in this list (no circles):

* ``check``: the typed checker of a file (``methods.settings``' rules; problems at file:line)
* ``source``: YAML read safely with the line of every key; YAML 1.2 scalars; the alias-bomb guard
* ``overrides``: ``--set KEY.PATH=VALUE``, edits of the suite's mapping before it is checked
* ``ids``: canonical JSON and its hash, from which cell and stage ids are made
* ``variants``: method entries -> variants (grid combinations, labels, resolved hyperparameters)
* ``space``: a tuned suite's search space per method entry, cut to the budget
* ``suite``: ``load_suite`` / ``load_suite_dict``, every check of a suite
* ``plan``: ``expand``, the plan of cells and SFT stages with their ids
* ``only``: ``--only KEY=VALUE``, the part of a plan a filter selects (ids unchanged)
* ``cell``: a cell's or stage's typed config read back from its ``config.yaml``
* ``describe``: ``describe_plan``, a readable plan with a compute estimate
* ``docs``: the key tables of ``suites/README.md`` (``python -m harness.config docs``)

The schema itself (the dataclasses every part of the harness reads) is ``harness.schema``, kept
outside this package on purpose: core, data, models and evaluate read it and must not depend
on the suite machinery. The checking rules themselves are ``methods.settings``.
"""
from ..schema import SFT_METHOD
from .cell import (
    CellConfig,
    StageConfig,
    OnPolicyStageConfig,
    build_method,
    check_written_configs,
    load_cell_config,
    load_onpolicy_config,
    load_stage_config,
)
from .describe import describe_plan, tiny_param_estimate
from .docs import schema_markdown, update_readme
from .ids import config_hash
from .plan import Cell, OnPolicyStage, Plan, SFTStage, expand, final_cells
from .space import Point, SearchSpace
from .suite import LoadedSuite, launcher_overrides, load_suite, load_suite_dict
from .variants import Variant

__all__ = [
    "Cell", "CellConfig", "LoadedSuite", "OnPolicyStage", "OnPolicyStageConfig", "Plan", "Point", "SFTStage",
    "SFT_METHOD", "SearchSpace", "StageConfig", "Variant",
    "build_method", "check_written_configs", "config_hash", "describe_plan", "expand", "final_cells",
    "launcher_overrides", "load_cell_config", "load_onpolicy_config", "load_stage_config", "load_suite",
    "load_suite_dict", "schema_markdown", "tiny_param_estimate", "update_readme",
]
