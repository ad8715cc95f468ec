"""``--only KEY=VALUE[,VALUE...]``: run (or show) some cells of a plan, ids unchanged.

Keys: ``method`` (a method name, ``dpo``, or a row label, ``DPO (beta=0.1)``), ``model``,
``dataset`` and ``seed``. Values of one key are alternatives (``--only method=dpo,simpo``);
repeating ``--only`` with another key narrows the selection (``--only method=dpo --only
seed=0``: DPO's cells of seed 0), with the same key it adds values. A value that is itself a
name of the suite is one value even with a comma in it (a grid label, ``--only 'method=dpo
(beta=0.1, label_smoothing=0.1)'``). A filter selects cells,
never edits them: a selected cell has the id, config and folder it has in the whole plan, so a
later run without ``--only`` finds it done. The SFT and on-policy sample stages the selected
cells start from run too; the others do not.

A tuned suite (``tuning.enabled``): ``method``, ``model`` and ``dataset`` select trials and
finals alike; ``seed`` selects among the suite's ``seeds`` (finals and untuned rows), while a
selected method's trials keep all their ``tuning.seeds``, which its selection on dev needs.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from methods.settings import did_you_mean

from ..errors import UserError
from .plan import Cell, Plan, trains_on

KEYS = ("method", "model", "dataset", "seed")


@dataclass(frozen=True)
class Only:
    """The parsed ``--only`` options: key -> accepted values (as text), and the options."""

    values: dict
    texts: tuple
    raw: tuple = ()  # (key, the value text as given) per option

    def __bool__(self) -> bool:
        return bool(self.values)

    def describe(self) -> str:
        return " ".join(f"--only {t}" for t in self.texts)

    def resolved(self, known: dict[str, list[str]]) -> "Only":
        """A value text that is itself a name of this suite (a grid label with a comma, ``dpo
        (beta=0.1, label_smoothing=0.1)``) is one value, not a list."""
        values: dict[str, list[str]] = {}
        for key, text in self.raw:
            vals = [text.strip()] if text.strip() in known[key] else [v.strip() for v in text.split(",") if v.strip()]
            values.setdefault(key, [])
            values[key] += [v for v in vals if v not in values[key]]
        return Only(values, self.texts, self.raw)


def parse_only(texts: list[str]) -> Only:
    """The ``--only`` options; raises one ``UserError`` naming each malformed one."""
    values: dict[str, list[str]] = {}
    raw, problems = [], []
    for text in texts:
        key, eq, given = text.partition("=")
        key = key.strip()
        vals = [v.strip() for v in given.split(",") if v.strip()]
        if not eq or not key or not vals:
            problems.append(f"--only {text}: give KEY=VALUE[,VALUE...] with KEY one of {', '.join(KEYS)}, "
                            f"e.g. --only method=dpo,simpo")
        elif key not in KEYS:
            problems.append(f"--only {text}: unknown key {key!r}.{did_you_mean(key, list(KEYS))} "
                            f"Keys: {', '.join(KEYS)}")
        else:
            raw.append((key, given))
            values.setdefault(key, [])
            values[key] += [v for v in vals if v not in values[key]]
    if problems:
        raise UserError(problems=problems)
    return Only(values, tuple(texts), tuple(raw))


def _known(plan: Plan) -> dict[str, list[str]]:
    """Every value each key can take in this suite."""
    s = plan.suite
    methods = [x for c in plan.cells for x in (c.method, c.label, (c.config.get("tuning") or {}).get("entry"))]
    if plan.spaces:
        methods += [x for sp in plan.spaces for x in (sp.entry_label,)]
    seeds = list(s.seeds) + (list(s.tuning.seeds) if plan.tuned else [])
    return {"method": list(dict.fromkeys(m for m in methods if isinstance(m, str))),
            "model": [m.name for m in s.models], "dataset": [d.name for d in s.datasets],
            "seed": list(dict.fromkeys(str(x) for x in seeds))}


def check_only(only: Only, plan: Plan) -> None:
    """Each value names something of this suite (with a did-you-mean), else ``UserError``."""
    known = _known(plan)
    problems = []
    for key, vals in only.values.items():
        for v in vals:
            if v not in known[key]:
                problems.append(f"--only {key}={v}: this suite has no {key} {v!r}."
                                f"{did_you_mean(v, known[key])} Its {key}s: {', '.join(known[key])}")
    if problems:
        raise UserError(problems=problems)


def matches(only: Only, c: Cell) -> bool:
    """Whether ``c`` passes every key of the filter."""
    v = only.values
    entry = (c.config.get("tuning") or {}).get("entry")
    if "method" in v and not {c.method, c.label, entry} & set(v["method"]):
        return False
    if "model" in v and c.model not in v["model"]:
        return False
    if "dataset" in v and c.dataset not in v["dataset"]:
        return False
    if "seed" in v and c.role != "trial" and str(c.seed) not in v["seed"]:
        return False
    return True


def select(only: Only, plan: Plan, whole: Plan | None = None) -> Plan:
    """The part of ``plan`` the filter selects: its cells, the stages they (or, in a tuned
    suite, the finals of the selected models, data sets and seeds) start from, and its suite
    with only the selected models, data sets and seeds (a copy: the launcher is shared). Raises
    ``UserError`` when it selects no cell of ``plan`` (``whole``: the plan the values are
    checked against, when ``plan`` is a tuned suite's finals)."""
    if not only:
        return plan
    only = only.resolved(_known(whole or plan))
    check_only(only, whole or plan)
    cells = [c for c in plan.cells if matches(only, c)]
    if not cells and whole is None:
        raise UserError(f"{only.describe()}: selects none of the {len(plan.cells)} cells of suite "
                        f"{plan.suite.name!r} (each key narrows the selection); `validate` lists them")
    used_sft = {c.sft_stage_id for c in cells}
    used_op = {c.onpolicy_stage_id for c in cells}
    v, suite = only.values, plan.suite
    spaces = None if plan.spaces is None else [sp for sp in plan.spaces if "method" not in v or {
        sp.entry_label, sp.name, *(t.label for t in sp.trials)} & set(v["method"])]
    data = {d.name: d for d in suite.datasets}

    def wanted(st, onpolicy: bool = False) -> bool:
        """A tuned suite's stage that the selected finals will start from."""
        if not plan.tuned:
            return False
        if onpolicy and not any(sp.tuned and trains_on(sp.trials[0], data[st.dataset]) for sp in spaces):
            return False
        return (("model" not in v or st.model in v["model"]) and ("dataset" not in v or st.dataset in v["dataset"])
                and ("seed" not in v or st.seed is None or str(st.seed) in v["seed"]))

    # the suite narrowed to the selection: plan listings count it, a tuned suite's finals follow it
    narrowed = replace(suite, models=[m for m in suite.models if m.name in v.get("model", [m.name])],
                       datasets=[d for d in suite.datasets if d.name in v.get("dataset", [d.name])],
                       seeds=[x for x in suite.seeds if str(x) in v.get("seed", [str(x)])])
    return replace(plan, suite=narrowed, cells=cells, spaces=spaces,
                   sft_stages=[s for s in plan.sft_stages if s.stage_id in used_sft or wanted(s)],
                   onpolicy_stages=[s for s in plan.onpolicy_stages if s.stage_id in used_op or wanted(s, True)])
