"""Embedded preference tasks: generated, deterministic by seed, each with an oracle.

They let the whole harness run offline on a laptop with a tiny model, with numbers that
mean something (an exact-match oracle scores every generation). Each task provides

* SFT examples (prompt, response) to train the reference/initial policy,
* preference pairs for training, and held-out pairs (with the gold answer in
  ``pair.meta["answer"]``) for evaluation,
* ``score(meta, text) -> float``, the oracle (exact match), ``graded(meta, text) -> float``,
  a graded oracle in [0, 1] that gives partial credit and is 1 exactly when ``score`` is
  (it ranks on-policy samples, where exact match alone ties most pairs), and ``alphabet``
  for the char tokenizer.

Tasks:

``addition``
    ``"07+38=" -> "45"``: zero-padded operands (every prompt has the same length). The
    rejected answer is a *near miss*: the correct sum +-1, or one digit changed, so chosen
    and rejected differ in one or two tokens — the case token-level methods target.
    Calibrated here (ENVIRONMENT.md): a 0.33M-parameter model trained on a fixed set of 450
    two-digit problems plateaus around 0.2 held-out accuracy, a stable mid-accuracy start.
``reverse``
    ``"rev:hgfedcb=" -> "bcdefgh"``: reverse a string. Rejected answers differ broadly (a
    different permutation of the letters) and, with probability ``length_bias``, are longer
    than the chosen answer (extra letters appended), so length normalization and
    length-controlled metrics matter.

Data are generated from ``data_seed`` (a task argument), not from the training seed, so every
cell of a suite sees the same data. ``label_noise`` (a data-set setting) swaps chosen and
rejected in a seeded fraction of *training* pairs, never held-out ones.
"""
from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from methods.registry import Registry
from methods.settings import INVALID, Checker, Range, SettingError, ok

from .pairs import PreferencePair

TASKS: Registry[type["EmbeddedTask"]] = Registry("embedded task")

EOS_FREE_NOTE = "responses carry no end-of-sequence text; the tokenizer appends its EOS token"


@dataclass
class TaskData:
    sft: list[tuple[str, str]]
    train: list[PreferencePair]
    heldout: list[PreferencePair]
    stats: dict = field(default_factory=dict)


def _arg(default, help, range=None):
    md = {"help": help}
    if range is not None:
        md["range"] = range
    return field(default=default, metadata=md)


class EmbeddedTask:
    name: ClassVar[str]
    Args: ClassVar[type]
    alphabet: ClassVar[str]

    def __init__(self, **args: Any):
        checker = Checker()
        self.args = self.checked_args(args, checker)
        checker.raise_first()  # a SettingError (a ValueError) naming the argument

    @classmethod
    def checked_args(cls, args: dict, checker: Checker, path: tuple = ()) -> Any:
        """``args`` as this task's ``Args``, checked by the one typed checker (types, ranges,
        choices, unknown names), then by the task's own cross-field ``check``; problems go
        to ``checker`` at ``path`` + the argument's name. ``INVALID`` when any was found."""
        before = len(checker.problems)
        good = checker.fields(cls.Args, args, path)
        if len(checker.problems) > before or not ok(*good.values()):
            return INVALID
        a = cls.Args(**good)
        try:
            cls.check(a)
        except SettingError as e:
            checker.add(path + e.path, e.reason)
            return INVALID
        except ValueError as e:  # a task that states its problem without naming the argument
            checker.add(path, str(e))
            return INVALID
        return a

    @staticmethod
    def check(args: Any) -> None:
        """Cross-field checks of the arguments; raise ``SettingError(reason, path=(name,))``."""

    def generate(self, label_noise: float = 0.0) -> TaskData:  # pragma: no cover - abstract
        raise NotImplementedError

    def score(self, meta: dict, text: str) -> float:
        """Exact match of the generated text (whitespace-stripped) with the gold answer."""
        return float(text.strip() == meta["answer"])

    def graded(self, meta: dict, text: str) -> float:
        """Partial credit in [0, 1], 1 exactly for a correct answer; the default is exact match."""
        return self.score(meta, text)

    @classmethod
    def describe(cls) -> str:
        lines = [f"{cls.name}: {(cls.__doc__ or '').strip().splitlines()[0]}"]
        for fl in dataclasses.fields(cls.Args):
            rng = fl.metadata.get("range")
            lines.append(f"    {fl.name}={fl.default!r}{f' in {rng}' if rng else ''}  {fl.metadata.get('help', '')}")
        return "\n".join(lines)


def make_task(name: str, args: dict | None = None) -> EmbeddedTask:
    return TASKS.get(name)(**(args or {}))


def _flip(pairs: list[PreferencePair], rate: float, seed: int) -> int:
    """Swap chosen/rejected in round(rate * n) seeded pairs; returns how many."""
    if rate <= 0:
        return 0
    rng = random.Random(f"label-noise-{seed}")
    idx = rng.sample(range(len(pairs)), round(rate * len(pairs)))
    for i in idx:
        p = pairs[i]
        p.chosen, p.rejected = p.rejected, p.chosen
        p.meta["flipped"] = True
    return len(idx)


def right_aligned_match(answer: str, text: str) -> float:
    """Share of positions, aligned from the right, where ``answer`` and ``text`` agree, over
    the longer length (1 only when they are equal; 0 for an empty text)."""
    n = max(len(answer), len(text))
    if n == 0:
        return 1.0
    return sum(a == b for a, b in zip(reversed(answer), reversed(text))) / n


def levenshtein(a: str, b: str) -> int:
    """Edits (insertions, deletions, substitutions) that turn ``a`` into ``b``."""
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


# --------------------------------------------------------------------------- addition
@dataclass
class AdditionArgs:
    digits: int = _arg(2, "digits per operand", Range(ge=1, le=4))
    n_sft: int = _arg(450, "distinct SFT problems (a fixed set: small sets memorize, large ones generalize)", Range(ge=1))
    n_pairs: int = _arg(2000, "training preference pairs (fresh problems)", Range(ge=1))
    n_heldout: int = _arg(500, "held-out problems for evaluation", Range(ge=1))
    rejected: Literal["near_miss", "random"] = _arg(
        "near_miss", "near_miss (correct +-1 or one digit changed) or random (any wrong sum)")
    data_seed: int = _arg(0, "seed of the generated data", Range(ge=0))


@TASKS.register("addition")
class Addition(EmbeddedTask):
    """Zero-padded addition with near-miss rejected answers ("07+38=" -> "45")."""

    name = "addition"
    Args = AdditionArgs
    alphabet = "0123456789+="

    @staticmethod
    def check(a: AdditionArgs) -> None:
        space = (10 ** a.digits) ** 2
        if a.n_sft + a.n_heldout > space:
            raise SettingError(f"n_sft + n_heldout = {a.n_sft + a.n_heldout} exceeds the {space} distinct "
                               f"{a.digits}-digit problems; lower them or raise digits", ("n_sft",))

    def graded(self, meta: dict, text: str) -> float:
        """Digit-level credit: the answer and the text aligned at their last digit (place
        value), the share of positions that agree, over the longer of the two. "46" for 45
        scores 1/2, "145" scores 2/3, "54" scores 0; only the exact answer scores 1."""
        return right_aligned_match(meta["answer"], text.strip())

    def _wrong(self, rng: random.Random, s: int) -> str:
        if self.args.rejected == "random":
            hi = 2 * (10 ** self.args.digits - 1)
            while True:
                w = rng.randint(0, hi)
                if w != s:
                    return str(w)
        if rng.random() < 0.5 or s < 10:
            w = s + rng.choice((-1, 1)) if s > 0 else s + 1
            return str(w)
        digits = list(str(s))
        i = rng.randrange(len(digits))
        choices = [d for d in "0123456789" if d != digits[i] and not (i == 0 and d == "0")]
        digits[i] = rng.choice(choices)
        return "".join(digits)

    def generate(self, label_noise: float = 0.0) -> TaskData:
        a = self.args
        rng = random.Random(f"addition-{a.digits}-{a.data_seed}")
        n = 10 ** a.digits
        all_problems = [(x, y) for x in range(n) for y in range(n)]
        rng.shuffle(all_problems)
        heldout_p = all_problems[: a.n_heldout]
        sft_p = all_problems[a.n_heldout: a.n_heldout + a.n_sft]
        rest = all_problems[a.n_heldout + a.n_sft:] or all_problems[a.n_heldout:]
        # Preference prompts are drawn from problems outside the held-out set (with
        # repetition when the pool is smaller than n_pairs).
        pair_p = [rest[i % len(rest)] for i in range(a.n_pairs)]
        fmt = lambda x, y: f"{x:0{a.digits}d}+{y:0{a.digits}d}="  # noqa: E731

        def pair(x, y):
            s = x + y
            return PreferencePair(fmt(x, y), str(s), self._wrong(rng, s), {"answer": str(s)})

        train = [pair(x, y) for x, y in pair_p]
        flipped = _flip(train, label_noise, a.data_seed)
        return TaskData(
            sft=[(fmt(x, y), str(x + y)) for x, y in sft_p],
            train=train,
            heldout=[pair(x, y) for x, y in heldout_p],
            stats={"flipped": flipped},
        )


# ---------------------------------------------------------------------------- reverse
@dataclass
class ReverseArgs:
    min_len: int = _arg(6, "shortest string", Range(ge=1, le=30))
    max_len: int = _arg(9, "longest string", Range(ge=1, le=30))
    letters: int = _arg(8, "size of the alphabet (first letters of a-z)", Range(ge=2, le=26))
    n_sft: int = _arg(400, "SFT examples", Range(ge=1))
    n_pairs: int = _arg(2000, "training preference pairs", Range(ge=1))
    n_heldout: int = _arg(500, "held-out prompts", Range(ge=1))
    length_bias: float = _arg(0.5, "probability that the rejected answer is longer than the chosen one", Range(ge=0, le=1))
    data_seed: int = _arg(0, "seed of the generated data", Range(ge=0))


@TASKS.register("reverse")
class Reverse(EmbeddedTask):
    """String reversal with broadly different, often longer rejected answers ("rev:abc=" -> "cba")."""

    name = "reverse"
    Args = ReverseArgs
    alphabet = "abcdefghijklmnopqrstuvwxyz:="

    @staticmethod
    def check(a: ReverseArgs) -> None:
        if a.min_len > a.max_len:
            raise SettingError(f"min_len ({a.min_len}) must be <= max_len ({a.max_len})", ("min_len",))

    def graded(self, meta: dict, text: str) -> float:
        """Edit-distance credit: ``1 - levenshtein(answer, text) / max(len(answer), len(text))``
        (one wrong, missing or extra letter in 8 scores 7/8; only the exact answer scores 1)."""
        return 1.0 - levenshtein(meta["answer"], text.strip()) / max(len(meta["answer"]), len(text.strip()), 1)

    def generate(self, label_noise: float = 0.0) -> TaskData:
        a = self.args
        rng = random.Random(f"reverse-{a.data_seed}")
        letters = "abcdefghijklmnopqrstuvwxyz"[: a.letters]
        seen: set[str] = set()

        def fresh() -> str:
            for _ in range(10_000):
                s = "".join(rng.choice(letters) for _ in range(rng.randint(a.min_len, a.max_len)))
                if s not in seen and len(set(s)) > 1:
                    seen.add(s)
                    return s
            raise ValueError("reverse: ran out of distinct strings; raise letters or max_len")

        def wrong(s: str) -> str:
            target = s[::-1]
            while True:
                w = list(target)
                rng.shuffle(w)
                w = "".join(w)
                if rng.random() < a.length_bias:
                    w += "".join(rng.choice(letters) for _ in range(rng.randint(2, 4)))
                if w != target:
                    return w

        def pair(s: str) -> PreferencePair:
            return PreferencePair(f"rev:{s}=", s[::-1], wrong(s), {"answer": s[::-1]})

        heldout = [pair(fresh()) for _ in range(a.n_heldout)]
        sft_strings = [fresh() for _ in range(a.n_sft)]
        train = [pair(fresh()) for _ in range(a.n_pairs)]
        flipped = _flip(train, label_noise, a.data_seed)
        return TaskData(
            sft=[(f"rev:{s}=", s[::-1]) for s in sft_strings],
            train=train,
            heldout=heldout,
            stats={"flipped": flipped},
        )
