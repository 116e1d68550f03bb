"""Hugging Face hub datasets: fail fast when the hub cannot be reached, read the Arrow cache in batches."""
from __future__ import annotations

import os
import socket
from dataclasses import replace
from typing import Any, Iterator
from urllib.parse import urlparse

from prep.readers import OFFLINE_HINT, SUFFIXES, DataError, Source, first_line
from prep.tables import record_columns

# The hub probe: long enough for any working network, short enough that an offline
# run fails in seconds (load_dataset retries for about 25 s before giving up).
_HUB_PROBE_SECONDS = 3.0


def hub_records(source: Source, split: str, batch_size: int) -> Iterator[tuple[int, int | None, Any]]:
    dataset = dataset_of(source, split)
    if len(dataset) == 0:
        raise DataError(f"{source.name} (split {split}): zero records.", reason="no_records")
    columns = record_columns(source, dataset.column_names)
    # Arrow format: each batch is a slice of the memory-mapped cache, turned
    # into Python rows one batch at a time.
    batches = dataset.select_columns(columns).with_format("arrow").iter(batch_size=batch_size)
    index = 0
    for table in batches:
        for record in table.to_pylist():
            yield index, None, record
            index += 1


def dataset_of(source: Source, split: str) -> Any:
    return source.dataset if source.dataset is not None else load_hub(source.name, split)


def _unreachable(name: str) -> DataError:
    return DataError(
        f"{name}: the Hugging Face hub cannot be reached and the dataset is not in the local "
        f"cache; {OFFLINE_HINT}, or pass a local .jsonl/.json/.parquet/.csv file.",
        reason="hub_unreachable",
    )


def hub_reachable() -> bool:
    """False when offline mode is on or the hub's host does not answer a TCP connect within
    `_HUB_PROBE_SECONDS`; load_dataset would spend about 25 s retrying before the same answer."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    if any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True  # only the proxy knows; a direct connect proves nothing
    url = urlparse(constants.ENDPOINT)
    try:
        with socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)),
                                      timeout=_HUB_PROBE_SECONDS):
            return True
    except OSError:
        return False


def preflight(source: Source, split: str) -> Source:
    """Fail now, before prep loads its tokenizer, when a hub dataset can only come from a cache
    that does not hold it: an offline run stops in seconds with the line naming DATA=sample.
    Returns the source with the dataset loaded where it had to be loaded to know."""
    if source.kind == "hub" and source.dataset is None and not hub_reachable():
        return replace(source, dataset=load_hub(source.name, split, offline=True))
    return source


def load_hub(name: str, split: str, offline: bool | None = None) -> Any:
    """The hub dataset `name`; `offline` (probed when None) reads only the local cache."""
    try:
        # Imported here: local files never pay for (or need) `datasets`.
        import datasets
    except ImportError as e:
        raise DataError(
            f"{name}: reading a hub dataset needs the 'datasets' package (pip install datasets); "
            f"or use a local file, or {OFFLINE_HINT}.",
            reason="hub_unreachable",
        ) from e
    # Offline, load_dataset still serves a cached copy; only an uncached one must fail fast.
    if offline is None:
        offline = not hub_reachable()
    try:
        if offline:
            with _hub_offline():
                dataset = datasets.load_dataset(name, split=split)
        else:
            dataset = datasets.load_dataset(name, split=split)
    except Exception as e:  # noqa: BLE001 - every failure becomes one readable DataError
        raise (_unreachable(name) if offline else _hub_error(name, split, e)) from e
    if not isinstance(dataset, datasets.Dataset):
        raise DataError(
            f"{name} (split {split}): load_dataset returned {type(dataset).__name__}, expected a Dataset.",
            reason="unreadable_file",
        )
    return dataset


class _hub_offline:
    """Offline mode for one load_dataset call: it then reads the cache or fails at once."""

    def __enter__(self) -> None:
        import datasets.config
        import huggingface_hub.constants

        self._saved = (datasets.config.HF_HUB_OFFLINE, huggingface_hub.constants.HF_HUB_OFFLINE)
        datasets.config.HF_HUB_OFFLINE = huggingface_hub.constants.HF_HUB_OFFLINE = True

    def __exit__(self, *exc: object) -> None:
        import datasets.config
        import huggingface_hub.constants

        datasets.config.HF_HUB_OFFLINE, huggingface_hub.constants.HF_HUB_OFFLINE = self._saved


def _hub_error(name: str, split: str, error: Exception) -> DataError:
    chain: list[BaseException] = []
    seen: BaseException | None = error
    while seen is not None and len(chain) < 20:
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    if any(isinstance(e, (ConnectionError, TimeoutError)) for e in chain):
        return _unreachable(name)
    if any(type(e).__name__ == "DatasetNotFoundError" for e in chain):
        return DataError(
            f"{name}: no such dataset on the Hugging Face hub (or it is private or gated). Check the id; "
            f"a local file needs a {', '.join(SUFFIXES)} extension.",
            reason="hub_not_found",
        )
    if isinstance(error, ValueError) and "split" in str(error).lower():
        return DataError(
            f"{name}: split {split!r} not found: {first_line(error)}. Choose one of the dataset's splits.",
            reason="hub_not_found",
        )
    return DataError(
        f"{name} (split {split}): could not load the hub dataset: {type(error).__name__}: "
        f"{first_line(error)}",
        reason="hub_error",
    )
