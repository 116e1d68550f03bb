"""prep --engine ray: the same shard set, byte for byte, as --workers 1, on a local Ray with 2 CPUs."""
from __future__ import annotations

import logging

import pytest
import ray  # a dev dependency: CI runs these tests, so a missing Ray fails them rather than skipping

from prep.config import PrepConfig
from tests.test_prep_workers import RECORDS, _prep, _same, small_files  # noqa: F401 (a fixture)
from tests.conftest import write_jsonl

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray for the module (prep joins a Ray already started, and leaves it running)."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    yield
    ray.shutdown()


@pytest.mark.parametrize("mode", ["padding", "packed", "concat"])
def test_ray_writes_the_bytes_one_process_writes(tmp_path, mode, local_ray, small_files):
    """Several files a split, so pass 2 writes them on the actors too."""
    data = write_jsonl(tmp_path / "data.jsonl", RECORDS)
    one = _prep(data, tmp_path / "one", 1, mode=mode)
    on_ray = _prep(data, tmp_path / "ray", 2, mode=mode, engine="ray")
    _same(one, on_ray)
    assert len(one.files) >= 4 and on_ray.args["engine"] == "ray"


def test_ray_skips_and_stops_as_one_process_does(tmp_path, local_ray):
    """Skipped records counted the same; an error in the middle: the same one line, nothing left behind."""
    records = list(RECORDS)
    records[170:170] = [{"instruction": 7}]
    data = write_jsonl(tmp_path / "data.jsonl", records)
    _same(_prep(data, tmp_path / "one", 1, skip_bad=True), _prep(data, tmp_path / "ray", 2, skip_bad=True,
                                                                 engine="ray"))
    records = list(RECORDS)
    records[190] = {"messages": [{"role": "user", "content": "Weather?"}, {"role": "assistant", "content": "Sunny."}],
                    "tools": [{"type": "function", "function": {"name": "weather", "parameters": {}}}]}
    data = write_jsonl(tmp_path / "bad.jsonl", records)
    lines = []
    for name, engine in (("one", "local"), ("ray", "ray")):
        with pytest.raises(Exception) as caught:
            _prep(data, tmp_path / f"bad-{name}", 1 if engine == "local" else 2, engine=engine)
        lines.append(str(caught.value))
        assert not (tmp_path / f"bad-{name}").exists()
    assert lines[0] == lines[1] and lines[0].startswith(f"{data}: record 190:") and "\n" not in lines[0]


def test_without_ray_the_engine_says_how_to_install_it(tmp_path, monkeypatch):
    import sys

    from sftcli import ConfigError

    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(ConfigError) as caught:
        PrepConfig(data="sample", out=str(tmp_path / "s"), engine="ray").validate()
    assert "pip install 'sftpack[ray]'" in str(caught.value) and "\n" not in str(caught.value)
