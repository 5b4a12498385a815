"""Every input shape (ultrachat, OpenAI, Alpaca, ShareGPT, mapped columns; JSONL, JSON,
parquet, CSV, folders, the hub code path) ends up as the same chat schema."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from amlft.data import PrepareOptions, iter_rows, prepare
from amlft.data import sources as sources_mod
from amlft.errors import DataError


def _write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def _chat(i: int) -> dict:
    q = f"Question {i}: what is {i} squared?"
    return {"prompt": q, "prompt_id": f"id-{i}",
            "messages": [{"role": "user", "content": q}, {"role": "assistant", "content": f"{i * i}"}]}


def test_alpaca_instruction_and_input_become_the_user_turn(tmp_path):
    src = _write_jsonl(tmp_path / "alpaca.jsonl", [
        {"instruction": "Translate to French", "input": "cheese", "output": "fromage"},
        {"instruction": "Say hi", "input": "", "output": "hi"},
        {"instruction": "No output here", "input": ""},
    ])
    result = prepare(src, tmp_path / "out", PrepareOptions(on_error="skip"))
    assert result.format == "alpaca"
    rows = list(iter_rows(result.file("train")))
    assert rows[0]["messages"] == [{"role": "user", "content": "Translate to French\n\ncheese"},
                                   {"role": "assistant", "content": "fromage"}]
    assert rows[0]["prompt"] == "Translate to French\n\ncheese"
    assert len(rows[0]["prompt_id"]) == 64  # a content hash fills the missing id
    assert rows[1]["messages"][0]["content"] == "Say hi"
    assert result.report["reasons"] == {"field_missing": 1}
    reject = json.loads(result.rejected_path.read_text().splitlines()[0])
    assert reject["line"] == 3 and reject["reasons"][0]["field"] == "output"


def test_openai_rows_get_prompt_and_prompt_id_and_keep_extra_keys(tmp_path):
    msgs = [{"role": "system", "content": "terse"}, {"role": "user", "content": "2+2?", "name": "ann"},
            {"role": "assistant", "content": "4"}]
    src = _write_jsonl(tmp_path / "chat.jsonl", [{"messages": msgs}])
    result = prepare(src, tmp_path / "out")
    assert result.format == "openai"
    (row,) = iter_rows(result.file("train"))
    assert list(row) == ["prompt", "prompt_id", "messages"]
    assert row["prompt"] == "2+2?" and row["messages"] == msgs


def test_sharegpt_speakers_are_mapped(tmp_path):
    src = _write_jsonl(tmp_path / "sg.jsonl", [
        {"id": "a", "conversations": [{"from": "system", "value": "be nice"}, {"from": "human", "value": "hi"},
                                      {"from": "gpt", "value": "hello"}]},
        {"id": "b", "conversations": [{"from": "human", "value": "hi"}, {"from": "robot", "value": "beep"}]},
    ])
    result = prepare(src, tmp_path / "out", PrepareOptions(on_error="skip"))
    assert result.format == "sharegpt"
    (row,) = iter_rows(result.file("train"))
    assert [m["role"] for m in row["messages"]] == ["system", "user", "assistant"]
    assert row["id"] == "a"
    assert result.report["reasons"] == {"role_invalid": 1}


def test_column_mapping_for_arbitrary_field_names(tmp_path):
    src = _write_jsonl(tmp_path / "odd.jsonl", [
        {"dialog": [{"speaker": "user", "text": "q"}, {"speaker": "assistant", "text": "a"}]}])
    with pytest.raises(DataError, match="could not recognise the data format"):
        prepare(src, tmp_path / "out")
    opts = PrepareOptions(columns={"messages": "dialog", "role": "speaker", "content": "text"})
    (row,) = iter_rows(prepare(src, tmp_path / "out", opts).file("train"))
    assert row["messages"] == [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]


def test_forced_format_rejects_rows_that_do_not_fit(tmp_path):
    src = _write_jsonl(tmp_path / "x.jsonl", [_chat(1), {"instruction": "i", "output": "o"}])
    result = prepare(src, tmp_path / "out", PrepareOptions(format="ultrachat", on_error="skip"))
    assert result.counts["train_sft"] == {"in": 2, "kept": 1, "rejected": 1}
    assert result.report["reasons"] == {"messages_missing": 1}


def test_json_array_parquet_and_csv_sources(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [_chat(i) for i in range(4)]
    (tmp_path / "a.json").write_text(json.dumps(rows), encoding="utf-8")
    # columnar files give every message every key; nulls must not leak into the output
    rows_pq = [dict(r) for r in rows]
    rows_pq[0] = dict(rows[0], messages=[dict(rows[0]["messages"][0], name="x"), rows[0]["messages"][1]])
    pq.write_table(pa.Table.from_pylist(rows_pq), tmp_path / "b.parquet")
    with open(tmp_path / "c.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["instruction", "input", "output"])
        w.writerow(["Name a colour", "", "blue"])
        w.writerow(["Multi\nline", "ctx", "ok"])
        w.writerow(["", "", "empty instruction"])
    a = prepare(tmp_path / "a.json", tmp_path / "oa")
    assert [r["prompt_id"] for r in iter_rows(a.file("train"))] == [f"id-{i}" for i in range(4)]
    b = prepare(tmp_path / "b.parquet", tmp_path / "ob")
    got = list(iter_rows(b.file("train")))
    assert got[0]["messages"][0] == {"role": "user", "content": rows[0]["prompt"], "name": "x"}
    assert got[1]["messages"] == rows[1]["messages"]
    c = prepare(tmp_path / "c.csv", tmp_path / "oc", PrepareOptions(on_error="skip"))
    assert c.format == "alpaca" and c.counts["train_sft"] == {"in": 3, "kept": 2, "rejected": 1}
    reject = json.loads(c.rejected_path.read_text())
    assert reject["line"] == 5 and reject["reasons"][0]["code"] == "content_empty"


def test_folder_of_split_files_keeps_split_names(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    _write_jsonl(src / "train_sft.jsonl", [_chat(i) for i in range(6)])
    _write_jsonl(src / "test_sft.jsonl", [_chat(i) for i in range(10, 12)])
    _write_jsonl(src / "test_gen.jsonl", [_chat(i) for i in range(20, 22)])
    result = prepare(src, tmp_path / "out")
    assert set(result.splits) == {"train_sft", "test_sft", "test_gen"}
    assert result.roles == {"train": "train_sft", "test": "test_sft", "validation": None, "invoke": "test_gen"}
    assert result.counts["test_gen"] == {"in": 2, "kept": 2, "rejected": 0}


# ------------------------------------------------------------------ the hub code path
@pytest.fixture
def fake_hub(tmp_path, monkeypatch):
    """A local parquet 'hub' behind the real datasets.load_dataset split-slicing code."""
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    files = {}
    for split, n in (("train_sft", 10), ("test_sft", 4), ("train_gen", 3), ("test_gen", 7)):
        files[split] = str(tmp_path / "hub" / f"{split}.parquet")
        Path(files[split]).parent.mkdir(exist_ok=True)
        pq.write_table(pa.Table.from_pylist([_chat(i + 100 * len(files)) for i in range(n)]), files[split])
    calls = []
    real_load = datasets.load_dataset

    def load_dataset(path, split=None, **kw):
        calls.append((path, split))
        assert path == "HuggingFaceH4/ultrachat_200k"
        return real_load("parquet", data_files=files, split=split, cache_dir=str(tmp_path / "cache"))

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    monkeypatch.setattr(datasets, "get_dataset_split_names", lambda path, **kw: list(files))
    monkeypatch.setattr(sources_mod, "hub_reachable", lambda timeout=3.0: True)
    from amlft.data import preparer as prepare_mod
    monkeypatch.setattr(prepare_mod, "hub_reachable", lambda timeout=3.0: True)
    return calls


def test_hub_split_pc_takes_the_first_n_percent_of_each_split(tmp_path, fake_hub):
    opts = PrepareOptions(split_pc=25, splits=["train_sft", "test_sft", "test_gen"])
    result = prepare("HuggingFaceH4/ultrachat_200k", tmp_path / "out", opts)
    # datasets' 'closest' rounding: 25% of 10 -> 2 (round half to even), of 4 -> 1, of 7 -> 2
    assert {n: c["kept"] for n, c in result.counts.items()} == {"train_sft": 2, "test_sft": 1, "test_gen": 2}
    assert ("HuggingFaceH4/ultrachat_200k", "train_sft[:25%]") in fake_hub
    first = next(iter_rows(result.file("train")))
    assert first["prompt_id"] == "id-100"  # the first rows, in order
    assert result.report["splits"]["train_sft"]["origin"] == "HuggingFaceH4/ultrachat_200k[train_sft][:25%]"


def test_hub_all_splits_and_fractional_percent(tmp_path, fake_hub):
    result = prepare("HuggingFaceH4/ultrachat_200k", tmp_path / "out", PrepareOptions(split_pc=50.5))
    assert set(result.splits) == {"train_sft", "test_sft", "train_gen", "test_gen"}
    assert result.counts["train_sft"]["kept"] == 5  # round(5.05)
    assert result.counts["test_gen"]["kept"] == 4  # round(3.535)


def test_hub_split_name_typo_is_an_error_not_a_silent_drop(tmp_path, fake_hub):
    opts = PrepareOptions(splits=["trian_sft", "test_sft"])
    with pytest.raises(DataError, match="no split\\(s\\) trian_sft") as info:
        prepare("HuggingFaceH4/ultrachat_200k", tmp_path / "out", opts)
    assert "train_sft" in info.value.message  # it lists what exists
    assert not (tmp_path / "out").exists()


def test_hub_unreachable_is_a_clear_error(tmp_path, monkeypatch):
    from amlft.data import preparer as prepare_mod

    monkeypatch.setattr(prepare_mod, "hub_reachable", lambda timeout=3.0: False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    with pytest.raises(DataError, match="Hub cannot be reached") as info:
        prepare("HuggingFaceH4/ultrachat_200k", tmp_path / "out")
    assert "local file" in info.value.hint


def test_missing_local_path_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        prepare(tmp_path / "nope.jsonl", tmp_path / "out")
