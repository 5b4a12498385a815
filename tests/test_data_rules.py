"""The malformed-row corpus: one bad row per rule, each rejected with its reason and line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from amlft.data import PrepareOptions, check_messages, prepare, validate_path
from amlft.data.rules import REASONS
from amlft.errors import DataError

CORPUS = Path(__file__).parent / "data" / "malformed_chat.jsonl"
EXPECTED = json.loads((Path(__file__).parent / "data" / "malformed_chat.expected.json").read_text())


def test_every_rule_has_a_row_in_the_corpus():
    covered = {e["reason"] for e in EXPECTED["rejected"]}
    structural = set(REASONS) - {"too_many_tokens", "field_missing", "format_unrecognized", "duplicate", "leakage"}
    assert structural <= covered


def test_corpus_rows_rejected_with_reason_field_and_line():
    result = validate_path(CORPUS, PrepareOptions(max_examples=100))
    assert not result.ok
    got = {p["line"]: [(r["code"], r["field"]) for r in p["reasons"]] for p in result.problems}
    want = {e["line"]: [(e["reason"], e["field"])] for e in EXPECTED["rejected"]}
    assert got == want
    assert all(p["file"] == str(CORPUS) for p in result.problems)


def test_corpus_counts_reconcile():
    report = validate_path(CORPUS).report
    split = report["splits"]["malformed_chat"]
    assert split["in"] == EXPECTED["rows"] == split["kept"] + split["rejected"]
    assert split["kept"] == len(EXPECTED["valid_lines"])
    assert split["rejected"] == len(EXPECTED["rejected"])
    assert split["blank_lines"] == EXPECTED["blank_lines"]
    assert report["reasons"] == {e["reason"]: 1 for e in EXPECTED["rejected"]}
    assert report["reconciled"] is True


def test_skip_writes_valid_rows_byte_exact_and_every_reject(tmp_path):
    result = prepare(CORPUS, tmp_path / "out", PrepareOptions(on_error="skip"))
    src_lines = CORPUS.read_bytes().split(b"\n")
    kept = result.file("train").read_bytes().splitlines()
    # the BOM is dropped from the first line; the Bengali/emoji row is written back unchanged
    assert kept == [src_lines[0][3:], src_lines[16]]
    assert "এটা প্ৰশ্ন 🎉" in kept[1].decode("utf-8")
    assert json.loads(kept[1])["messages"][1]["name"] == "helper"  # extra message keys kept
    rejected = [json.loads(x) for x in result.rejected_path.read_text(encoding="utf-8").splitlines()]
    assert sorted(r["line"] for r in rejected) == [e["line"] for e in EXPECTED["rejected"]]
    assert all(r["file"] == str(CORPUS) and r["raw"] and r["reasons"] for r in rejected)
    bad_utf8 = next(r for r in rejected if r["line"] == 2)
    assert "\\xe9" in bad_utf8["raw"]  # undecodable byte shown, not lost
    report = json.loads(result.report_path.read_text())
    assert report["totals"] == {"in": 16, "kept": 2, "rejected": 14}


def test_fail_writes_nothing_and_names_the_rows(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(DataError) as info:
        prepare(CORPUS, out, PrepareOptions(on_error="fail"))
    msg = str(info.value)
    assert "14 of 16 rows" in msg and f"{CORPUS}:2: [invalid_utf8]" in msg and "nothing was written" in msg
    assert f"{CORPUS}:15: [last_not_assistant] messages[2].role" in msg
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []  # no temp folder left behind either


def test_fail_keeps_a_previous_good_preparation(tmp_path):
    good = tmp_path / "good.jsonl"
    good.write_text(json.dumps({"messages": [{"role": "user", "content": "q"},
                                             {"role": "assistant", "content": "a"}]}) + "\n")
    out = tmp_path / "out"
    first = prepare(good, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(DataError):
        prepare(CORPUS, out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert first.file("train").exists()


@pytest.mark.parametrize(("messages", "codes"), [
    ([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], []),
    ([{"role": "system", "content": "s"}, {"role": "user", "content": "q"},
      {"role": "assistant", "content": "a"}], []),
    ([{"role": "user", "content": "q"}, {"role": "user", "content": "q2"}, {"role": "assistant", "content": "a"}],
     ["roles_not_alternating"]),
    ([{"role": "system", "content": "s"}], ["last_not_assistant"]),
    ([{"role": "user"}, {"role": "assistant", "content": None}], ["content_not_string", "content_not_string"]),
    (None, ["messages_missing"]),
])
def test_check_messages(messages, codes):
    assert [p.code for p in check_messages(messages)] == codes
