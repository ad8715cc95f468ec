"""Evaluation's generation backends, chosen by ``eval.backend``.

* ``hf`` (default): ``transformers`` on the model in memory (:class:`~.generation.HFGenerator`),
  lm-eval through its ``hf`` model type on the same object.
* ``vllm``: vLLM on a GPU (:class:`VLLMGenerator`): each model evaluated is written once to a
  folder (safetensors and tokenizer) and served by a vLLM engine; greedy answers, samples for
  diversity and KL, and lm-eval (its ``vllm`` model type) all go through it. Needs the
  ``vllm`` package and a CUDA GPU.

Written against vLLM's documented offline API (``vllm.LLM(model=..., tokenizer=..., seed=...)``,
``LLM.generate`` with ``{"prompt_token_ids": [...]}`` prompts and one ``SamplingParams`` per
prompt; ``RequestOutput.outputs[j].token_ids``, ``finish_reason``, ``stop_reason``) and tested
against a stand-in module with that API (tests/test_vllm_backend.py). That its numbers agree
with the ``hf`` backend on a real model has NOT been checked on a GPU yet (docs/metrics.md).
"""
from __future__ import annotations

import importlib.util
import shutil
import tempfile
from pathlib import Path

from ..errors import UserError
from .generation import HFGenerator

# share of GPU memory a vLLM engine may take: the policy and the reference stay on the GPU
# beside it for the log-prob metrics
VLLM_GPU_MEMORY = 0.4
SEED_STRIDE, CALL_STRIDE = 1_000_003, 65_537   # request i of call c: seed * SEED_STRIDE + c * CALL_STRIDE + i


def generator_for(spec, tok, work_dir: Path, seed: int):
    """The generator ``spec.backend`` names (for the cell in ``work_dir``)."""
    if getattr(spec, "backend", "hf") == "hf":
        return HFGenerator(tok.pad_token_id, tok.eos_token_id, spec.max_new_tokens, spec.batch_size)
    return VLLMGenerator(tok, spec.max_new_tokens, Path(work_dir), seed)


def require_vllm() -> None:
    if importlib.util.find_spec("vllm") is None:
        raise UserError("eval.backend: vllm, but the vllm package is not installed here; install it on a "
                        "CUDA machine (`pip install vllm`), or use eval.backend: hf")
    import torch

    if not torch.cuda.is_available():
        raise UserError("eval.backend: vllm needs a CUDA GPU and none is visible here; use eval.backend: hf")


def response_ids(completion, eos_id: int) -> list[int]:
    """A vLLM completion as the ``hf`` backend returns responses: cut after the first EOS,
    EOS kept, also when vLLM stopped at EOS without listing it (``finish_reason`` "stop" with
    no ``stop_reason``)."""
    out: list[int] = []
    for t in completion.token_ids:
        out.append(int(t))
        if t == eos_id:
            return out
    if completion.finish_reason == "stop" and completion.stop_reason is None:
        out.append(eos_id)
    return out


class VLLMGenerator:
    """Greedy answers and samples from vLLM engines, one per model evaluated (kept while that
    model is the one asked for: policy and reference alternate once per cell at most)."""

    name = "vllm"
    one_model_at_a_time = True   # evaluation asks for the policy's generations first

    def __init__(self, tok, max_new_tokens: int, work_dir: Path, seed: int):
        require_vllm()
        self.tok, self.max_new_tokens, self.seed = tok, max_new_tokens, seed
        self.eos_id = tok.eos_token_id
        self._dir = Path(tempfile.mkdtemp(prefix=".vllm-", dir=work_dir))
        self._saved: dict[int, Path] = {}
        self._engine = None
        self._engine_of: int | None = None
        self._calls = 0

    # -------------------------------------------------------------- models on disk
    def saved(self, model) -> Path:
        """``model`` written once (safetensors, tokenizer) where vLLM can load it."""
        key = id(model)
        if key not in self._saved:
            from ..models import save_model

            path = self._dir / f"model-{len(self._saved)}"
            save_model(model, self.tok, path)
            self._saved[key] = path
        return self._saved[key]

    def engine(self, model):
        import vllm

        from ..core.batch import position_limit

        if self._engine_of != id(model):
            self._shutdown()
            path = str(self.saved(model))
            self._engine = vllm.LLM(model=path, tokenizer=path, seed=self.seed, dtype="auto",
                                    gpu_memory_utilization=VLLM_GPU_MEMORY, enforce_eager=True,
                                    max_model_len=position_limit(model))
            self._engine_of = id(model)
        return self._engine

    # -------------------------------------------------------------- generation
    def _run(self, model, prompts: list[list[int]], n: int, temperature: float, top_p: float) -> list[list[int]]:
        import vllm

        from ..core.batch import room_for

        out: list[list[int]] = [[] for _ in range(len(prompts) * n)]
        todo = [(i, p, room_for(model, len(p), self.max_new_tokens)) for i, p in enumerate(prompts)]
        todo = [t for t in todo if t[2] > 0]   # a prompt that fills the position table: empty answers
        if not todo:
            return out
        base = self.seed * SEED_STRIDE + self._calls * CALL_STRIDE
        self._calls += 1
        params = [vllm.SamplingParams(n=n, temperature=temperature, top_p=top_p, max_tokens=room,
                                      seed=None if temperature == 0 else base + i) for i, _, room in todo]
        results = self.engine(model).generate([{"prompt_token_ids": list(p)} for _, p, _ in todo], params,
                                              use_tqdm=False)
        for (i, _, _), res in zip(todo, results):
            for j, comp in enumerate(res.outputs[:n]):
                out[i * n + j] = response_ids(comp, self.eos_id)
        return out

    def greedy(self, model, prompts: list[list[int]]) -> list[list[int]]:
        return self._run(model, prompts, 1, 0.0, 1.0)

    def sample(self, model, prompts: list[list[int]], n: int, temperature: float, top_p: float) -> list[list[int]]:
        return self._run(model, prompts, n, temperature, top_p)

    # -------------------------------------------------------------- lm-eval
    def lm_eval_model(self, model, tok):
        """lm-eval's ``vllm`` model type over ``model`` written to disk."""
        from lm_eval.api.registry import get_model

        self._shutdown()   # one engine at a time on the GPU
        path = str(self.saved(model))
        return get_model("vllm")(pretrained=path, tokenizer=path, seed=self.seed, dtype="auto", batch_size="auto",
                                 gpu_memory_utilization=VLLM_GPU_MEMORY, enforce_eager=True)

    def _shutdown(self) -> None:
        if self._engine is not None:
            self._engine = None
            self._engine_of = None
            import gc

            import torch

            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()

    def close(self) -> None:
        self._shutdown()
        shutil.rmtree(self._dir, ignore_errors=True)
