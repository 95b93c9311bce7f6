"""``mpiswarm.read_results(path, as_frame=None)``: a DataFrame when pandas is there, else the dict."""
from __future__ import annotations

import math

import pytest

import mpiswarm
from mpiswarm.store import ResultFileError, read_results as read_dict

pd = pytest.importorskip("pandas")


def test_frame_columns_equal_the_datasets(results):
    for name in ("plain", "n2", "chat", "incomplete"):
        path = results[name].path
        df = mpiswarm.read_results(path)
        data = read_dict(path)
        assert isinstance(df, pd.DataFrame)
        assert list(df.columns) == ["custom_id", "prompt", "completion", "finish_reason", "ok", "error", "error_kind",
                                    "http_status", "chat", "rank", "prompt_tokens", "completion_tokens", "latency_s"]
        assert len(df) == len(results[name].rows) and list(df.index) == list(range(len(df)))
        for column in ("custom_id", "prompt", "error", "rank", "prompt_tokens", "completion_tokens"):
            assert df[column].tolist() == data[column].tolist(), column
        assert df["ok"].tolist() == data["ok"].tolist() and df["ok"].dtype == bool
        for got, want in zip(df["latency_s"].tolist(), data["latency_s"].tolist()):
            assert got == want or (math.isnan(got) and math.isnan(want))
        assert df["completion"].tolist() == data["completion"].tolist()  # lists a row when n > 1
        assert df["finish_reason"].tolist() == data["finish_reason"].tolist()
        assert df.attrs["mpiswarm"] == data["attrs"]
        assert df.attrs["ranks"]["n_prompts"] == data["ranks"]["n_prompts"].tolist()
    df = mpiswarm.read_results(results["n2"].path)
    assert all(isinstance(c, list) and len(c) == 2 for c in df["completion"])
    assert df.loc[df["custom_id"] == "id-0005", "completion"].iloc[0] == read_dict(results["n2"].path)[
        "completion"][5].tolist()


def test_dict_without_pandas_or_when_asked(results, monkeypatch):
    path = results["plain"].path
    data = mpiswarm.read_results(path, as_frame=False)
    assert isinstance(data, dict) and data["attrs"]["n_prompts"] == 120
    monkeypatch.setattr("mpiswarm.frame.pandas_available", lambda: False)
    data = mpiswarm.read_results(path)
    assert isinstance(data, dict) and data["prompt"].tolist() == read_dict(path)["prompt"].tolist()
    assert isinstance(mpiswarm.read_results(path, as_frame=True), pd.DataFrame)


def test_not_a_result_file(tmp_path):
    with pytest.raises(ResultFileError, match="no such file"):
        mpiswarm.read_results(tmp_path / "missing.h5")
    (tmp_path / "x.h5").write_text("not hdf5")
    with pytest.raises(ValueError, match="not an mpiswarm result file"):
        mpiswarm.read_results(tmp_path / "x.h5")
