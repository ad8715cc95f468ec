"""What `validate` and `run` say about data (issue 12): dropped rows are counted on the terminal
and in the report, unreachable hub data stops them with the whole reason and nothing written,
and the token-importance examples are tokenized as the training was."""
from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import yaml

from harness.cli import main

ROWS = [{"prompt": f"Question {i:02d}: what is {i} plus {i}?", "chosen": str(2 * i), "rejected": str(2 * i + 1)}
        for i in range(12)]
BAD = [{"prompt": "empty", "chosen": " ", "rejected": "x"}, {"prompt": "same", "chosen": "1", "rejected": "1"},
       {"prompt": "same 2", "chosen": "2", "rejected": " 2 "}]


def cli(*args) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main([str(a) for a in args])
        except SystemExit as e:
            rc = e.code
    return rc, out.getvalue(), err.getvalue()


def suite(tmp_path: Path, dataset: dict) -> Path:
    doc = {"name": "data", "models": [{"name": "t", "tiny": {"hidden_size": 32, "num_layers": 1, "num_heads": 2,
                                                             "max_position_embeddings": 64}}],
           "datasets": [{"name": "mine", "heldout_size": 4, **dataset}],
           "methods": [{"name": "dpo"}], "sft": {"enabled": False},
           "train": {"steps": 2, "batch_size": 2, "checkpoint_every": 0, "max_length": 48, "max_prompt_length": 32},
           "eval": {"enabled": False}}
    p = tmp_path / "suite.yaml"
    p.write_text(yaml.safe_dump(doc, sort_keys=False))
    return p


def test_dropped_rows_are_counted_by_validate_run_and_the_report(tmp_path):
    """Defect 6: `on_bad_rows: drop` dropped rows silently (exit 0); the count was only in
    metrics.json."""
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS + BAD))
    s = suite(tmp_path, {"path": "data.jsonl", "on_bad_rows": "drop"})
    line = ("data set 'mine': 15 rows read (pairs, detected), 3 bad rows dropped (on_bad_rows: drop: "
            "empty_response 1, identical_responses 2); 8 train / 4 held-out pairs")
    rc, out, err = cli("validate", s, "--results", tmp_path / "results")
    assert rc == 0, err
    assert line in out.splitlines()
    rc, out, err = cli("run", s, "--results", tmp_path / "results")
    assert rc == 0, err
    assert line in out.splitlines()
    report = (tmp_path / "results" / "data" / "report" / "report.md").read_text()
    assert ("data set 'mine': 3 of 15 rows dropped as bad (empty_response 1, identical_responses 2); "
            "tokenization dropped 0 of 8 training pairs") in report


def test_unreachable_hub_data_fails_validate_and_run_with_the_whole_reason(tmp_path, monkeypatch):
    """Defect 7: hub data offline passed `validate`; `run` then wrote three failed folders and
    showed only the last (`fix:`) line of the error."""
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    s = suite(tmp_path, {"hub": "Anthropic/hh-rlhf", "format": "hh-rlhf"})
    for cmd in ("validate", "run"):
        rc, out, err = cli(cmd, s, "--results", tmp_path / "results")
        assert rc == 2, (cmd, out, err)
        assert "data set 'mine': cannot load hub data set 'Anthropic/hh-rlhf' split 'train'" in err
        assert "offline mode is on" in err
        assert "fix: on a connected machine run" in err and "set `path: data.jsonl`" in err
        assert not (tmp_path / "results").exists()
    # --dry-run only prints the plan: it does not touch the hub
    rc, out, err = cli("run", s, "--results", tmp_path / "results", "--dry-run")
    assert rc == 0, err


def test_token_importance_examples_use_the_suites_chat_template_setting(tmp_path, monkeypatch):
    """Defect 8: runner.py tokenized the token-importance examples with the chat template on,
    whatever the suite said."""
    import torch

    import harness.core.importance as imp
    import harness.data.tokenize as tokmod
    from harness import runner
    from harness.data.pairs import PreferencePair
    from harness.schema import TrainSpec

    seen = []
    real = tokmod.tokenize

    def spy(examples, tok, max_length, max_prompt_length, use_chat_template=True, **kw):
        seen.append(use_chat_template)
        return real(examples, tok, max_length, max_prompt_length, use_chat_template, **kw)

    monkeypatch.setattr(tokmod, "tokenize", spy)
    monkeypatch.setattr(imp, "token_weights", lambda src, prompts, resp, *a: [torch.ones(len(r)) for r in resp])
    from harness.models import char_tokenizer

    tok = char_tokenizer("abc=+:Ae \nUsr")
    tok.chat_template = "{% for m in messages %}{{ m['content'] }}={% endfor %}"
    data = type("D", (), {"heldout": [PreferencePair("ab", "c", "a")]})()
    method = type("M", (), {"hparams": {"importance_source": "policy"}})()
    policy = torch.nn.Linear(1, 1)
    runner._write_importance_examples(policy, None, tok, data, method, tmp_path, TrainSpec(max_length=16,
                                      max_prompt_length=8), chat_template=False)
    assert seen == [False]
    ex = json.loads((tmp_path / "token_importance.json").read_text())["examples"]
    assert "".join(ex[0]["tokens"]) == "c<eos>"  # plain text: the response and EOS, no "=" from the template
