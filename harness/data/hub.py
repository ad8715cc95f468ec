"""Hub data sets: reachability, offline mode, and loading one split as plain rows.

``datasets.load_dataset`` without a network retries for ~25 s before failing, and with
offline flags it fails only for what is not in the local cache; both become one
``UserError`` here that names the data set, gives the whole reason, and says how to get the
data onto an offline machine. The CLI's ``validate`` and ``run`` load every data set before
anything is written, so an unreachable hub data set is an exit-2 input error, not three
failed cell folders.
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path

from harness.errors import UserError
from harness.hub import offline as hub_offline  # the one answer to "offline?"

HUB_CHECK_TIMEOUT_S = 10.0  # reachability check before datasets.load_dataset (which retries for ~25 s)


def _hub_fix(hub: str, split: str) -> str:
    return (f"fix: on a connected machine run `python -c \"import datasets; "
            f"datasets.load_dataset('{hub}', split='{split}').to_json('data.jsonl')\"`, copy the file here "
            f"and set `path: data.jsonl` instead of `hub:` (or fill the hub cache there and set HF_DATASETS_OFFLINE=1)")


def _check_hub_reachable(hub: str, name: str, split: str) -> None:
    """Fail in seconds, not after datasets' ~25 s of retries, when the hub is unreachable."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import GatedRepoError, HFValidationError, HfHubHTTPError, RepositoryNotFoundError

    try:
        HfApi().dataset_info(hub, timeout=HUB_CHECK_TIMEOUT_S)
    except GatedRepoError:
        return  # exists; datasets will ask for a token itself
    except RepositoryNotFoundError:
        raise UserError(f"data set '{name}': hub data set '{hub}' not found (or private without a token); "
                        f"check the id, or run `huggingface-cli login`") from None
    except HFValidationError as e:
        raise UserError(f"data set '{name}': '{hub}' is not a valid hub id: {e}") from None
    except HfHubHTTPError:
        return  # the hub answered; let datasets report anything else
    except Exception as e:  # connection errors come from several libraries (httpx, socket, ssl)
        raise UserError(problems=[
            f"data set '{name}': cannot reach the Hugging Face hub to load '{hub}' "
            f"({type(e).__name__}: {str(e)[:200]})",
            _hub_fix(hub, split)]) from None


@contextlib.contextmanager
def _offline_libraries(offline: bool):
    """Make datasets *and* huggingface_hub offline for one call when the user asked for it.
    Both read their flags once, at import, and HF_DATASETS_OFFLINE=1 alone leaves
    huggingface_hub online: any request that reaches it would then go through its retries
    (an online ``load_dataset`` without a network takes ~25 s to fail, measured)."""
    if not offline:
        yield
        return
    import datasets.config as dc
    import huggingface_hub.constants as hc

    saved = hc.HF_HUB_OFFLINE, dc.HF_HUB_OFFLINE
    hc.HF_HUB_OFFLINE = dc.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        hc.HF_HUB_OFFLINE, dc.HF_HUB_OFFLINE = saved


_OFFLINE_WHY = "offline mode is on (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE) and it is not in the local cache"


def _maybe_cached(hub: str) -> bool:
    """Whether the local caches hold anything for hub data set ``hub`` (datasets' own cache,
    ``<org>___<name>``, or the hub cache, ``datasets--<org>--<name>``), looked up without
    importing datasets: offline, a data set that is in neither cannot load, and saying so
    keeps ``validate`` light (no datasets, torch or pyarrow import)."""
    home = Path(os.environ.get("HF_HOME") or Path.home() / ".cache" / "huggingface")
    roots = {Path(os.environ.get("HF_DATASETS_CACHE") or home / "datasets"): hub.replace("/", "___"),
             Path(os.environ.get("HF_HUB_CACHE") or home / "hub"): "datasets--" + hub.replace("/", "--")}
    for root, folder in roots.items():
        try:
            if any(p.name.lower() == folder.lower() for p in root.iterdir()):
                return True
        except OSError:  # no such cache folder
            continue
    return False


def load_hub_split(hub: str, split: str, name: str) -> list[dict]:
    """The rows of one split of hub data set ``hub`` (``name``: the suite's name for it, for
    messages). Raises UserError, with the reason and the fix, when it cannot be had."""
    offline = hub_offline()
    local = Path(hub).exists()
    if offline and not local and not _maybe_cached(hub):
        raise UserError(problems=[f"data set '{name}': cannot load hub data set '{hub}' split '{split}': "
                                  f"{_OFFLINE_WHY}", _hub_fix(hub, split)])
    if not offline and not local:
        _check_hub_reachable(hub, name, split)
    import datasets

    try:
        with _offline_libraries(offline):
            ds = datasets.load_dataset(hub, split=split)
    except Exception as e:  # datasets raises ConnectionError, FileNotFoundError, ValueError (split), ...
        why = _OFFLINE_WHY if offline else f"{type(e).__name__}"
        raise UserError(problems=[
            f"data set '{name}': cannot load hub data set '{hub}' split '{split}': {why}: {str(e)[:300]}",
            _hub_fix(hub, split)]) from None
    return ds.to_list()
