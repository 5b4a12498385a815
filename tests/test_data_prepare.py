"""Splitting, sampling, duplicates and leakage; the lifecycle data step; the CLI verbs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from amlft.data import PrepareOptions, iter_rows, prepare, validate_path
from amlft.data.rules import check_messages
from amlft.errors import DataError


def _chat(i: int, answer: str | None = None) -> dict:
    q = f"Question {i}: what is {i} squared?"
    return {"prompt": q, "prompt_id": f"id-{i}",
            "messages": [{"role": "user", "content": q}, {"role": "assistant", "content": answer or f"{i * i}"}]}


def _write_jsonl(path: Path, rows: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def test_test_fraction_is_exact_seeded_and_disjoint(tmp_path):
    src = _write_jsonl(tmp_path / "all.jsonl", [_chat(i) for i in range(50)])
    a = prepare(src, tmp_path / "a", PrepareOptions(test_fraction=0.2, seed=7))
    b = prepare(src, tmp_path / "b", PrepareOptions(test_fraction=0.2, seed=7))
    c = prepare(src, tmp_path / "c", PrepareOptions(test_fraction=0.2, seed=8))
    assert a.counts == {"train_sft": {"in": 40, "kept": 40, "rejected": 0}, "test_sft": {"in": 10, "kept": 10, "rejected": 0}}
    ids = lambda r, role: [x["prompt_id"] for x in iter_rows(r.file(role))]  # noqa: E731
    assert ids(a, "test") == ids(b, "test") != ids(c, "test")
    assert not set(ids(a, "train")) & set(ids(a, "test"))
    assert a.roles["invoke"] == "test_sft"
    assert a.data_hash == b.data_hash != c.data_hash


def test_split_pc_and_sample_on_local_files(tmp_path):
    src = _write_jsonl(tmp_path / "all.jsonl", [_chat(i) for i in range(40)])
    r = prepare(src, tmp_path / "pc", PrepareOptions(split_pc=10))
    assert [x["prompt_id"] for x in iter_rows(r.file("train"))] == ["id-0", "id-1", "id-2", "id-3"]
    s = prepare(src, tmp_path / "s", PrepareOptions(sample=5, seed=1))
    picked = [x["prompt_id"] for x in iter_rows(s.file("train"))]
    assert len(picked) == 5 and picked != ["id-0", "id-1", "id-2", "id-3", "id-4"]
    assert s.report["splits"]["train_sft"]["source_rows"] == 40


def test_duplicates_and_leakage_reported_then_dropped(tmp_path):
    src = tmp_path / "src"
    _write_jsonl(src / "train_sft.jsonl", [_chat(1), _chat(2), _chat(1), _chat(3, "other"), _chat(4)])
    # same prompt_id as row 2 with a different answer: a duplicate by id
    _write_jsonl(src / "test_sft.jsonl", [_chat(4), _chat(9), dict(_chat(9, "x"), prompt_id="id-9")])
    kept = prepare(src, tmp_path / "keep")
    tr, te = kept.report["splits"]["train_sft"], kept.report["splits"]["test_sft"]
    assert (tr["duplicates"], tr["kept"]) == (1, 5)
    assert tr["duplicate_examples"][0] == {"file": str(src / "train_sft.jsonl"), "line": 3, "by": "content"}
    assert (te["duplicates"], te["leakage"], te["kept"]) == (1, 1, 3)

    dropped = prepare(src, tmp_path / "drop", PrepareOptions(drop_duplicates=True, drop_leakage=True))
    assert dropped.counts == {"train_sft": {"in": 5, "kept": 4, "rejected": 1},
                              "test_sft": {"in": 3, "kept": 1, "rejected": 2}}
    assert [x["prompt_id"] for x in iter_rows(dropped.file("test"))] == ["id-9"]
    rejects = [json.loads(x) for x in dropped.rejected_path.read_text().splitlines()]
    assert sorted((r["split"], r["line"], r["reasons"][0]["code"]) for r in rejects) == [
        ("test_sft", 1, "leakage"), ("test_sft", 3, "duplicate"), ("train_sft", 3, "duplicate")]
    assert dropped.report["reconciled"]
    # each split's hash, computed while writing (or after the leakage rewrite), is the published file's
    from amlft.hashing import file_sha256

    for result in (kept, dropped):
        for name, entry in result.report["splits"].items():
            assert entry["sha256"] == file_sha256(result.report_path.parent / f"{name}.jsonl"), (name, entry)


def test_non_ascii_round_trips_through_conversion(tmp_path):
    text = "আপনি কেমন আছেন? 🙂 \u200d👩‍💻 “quotes” — \\ and \"escapes\""
    src = _write_jsonl(tmp_path / "o.jsonl", [{"messages": [{"role": "user", "content": text},
                                                            {"role": "assistant", "content": text[::-1]}]}])
    out = prepare(src, tmp_path / "out").file("train")
    raw = out.read_text(encoding="utf-8")
    assert "আপনি কেমন আছেন? 🙂" in raw  # written as UTF-8, not \u escapes
    row = json.loads(raw)
    assert row["messages"][0]["content"] == text and row["messages"][1]["content"] == text[::-1]


def test_token_limit_uses_the_tokenizer(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[UNK]": 0, **{w: i + 1 for i, w in enumerate(["user", "assistant", ":", "q", "a", "long", "word"])}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]")
    fast.chat_template = "{% for m in messages %}{{ m.role }} : {{ m.content }} {% endfor %}"
    fast.save_pretrained(tmp_path / "tok")
    src = _write_jsonl(tmp_path / "t.jsonl", [
        {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]},
        {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "long " * 30}]},
    ])
    opts = PrepareOptions(max_seq_length=20, tokenizer=str(tmp_path / "tok"), on_error="skip")
    result = prepare(src, tmp_path / "out", opts)
    assert result.report["reasons"] == {"too_many_tokens": 1}
    # counted through the chat template: "user : q assistant : a" is 6 tokens
    assert result.report["splits"]["train_sft"]["tokens"]["max"] == 6
    with pytest.raises(DataError, match="needs --tokenizer"):
        PrepareOptions(max_seq_length=10)


def _synthetic_module():
    """scripts/synthetic_chat.py: benchmark data, not part of the library."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "scripts" / "synthetic_chat.py"
    spec = importlib.util.spec_from_file_location("synthetic_chat", path)
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_synthetic_rows_are_ultrachat_shaped(tmp_path):
    syn = _synthetic_module()
    generate_rows, write_jsonl = syn.generate_rows, syn.write_jsonl

    rows = list(generate_rows(400, seed=3))
    assert all(set(r) == {"prompt", "prompt_id", "messages"} and not check_messages(r["messages"]) for r in rows)
    assert len({r["prompt_id"] for r in rows}) == 400
    size = write_jsonl(tmp_path / "s.jsonl", 400, seed=3)
    assert 5_500 < size / 400 < 8_000  # ~6.7 KB per row, like ultrachat_200k
    assert validate_path(tmp_path / "s.jsonl").ok


# ------------------------------------------------------------------ the lifecycle step
def _ctx(tmp_path, monkeypatch, *, source: str, rehearse: bool = False, backend: str = "local", **data):
    from amlft.backends.base import StepContext
    from amlft.config import Profile
    from amlft.console import Console
    from amlft.records import RunRecord

    monkeypatch.setenv("AMLFT_HOME", str(tmp_path / "home"))
    prof = Profile.from_dict({"backend": backend, "data": {"source": source, **data}})
    rec = RunRecord.create(backend=backend, profile=prof.to_dict(), profile_path=None, rehearse=rehearse)
    return StepContext(profile=prof, record=rec, console=Console(quiet=True), rehearse=rehearse)


@pytest.fixture
def sample_dir(tmp_path, monkeypatch):
    import amlft.resources

    d = tmp_path / "sample_chat"
    for split, n in (("train_sft", 12), ("test_sft", 3), ("train_gen", 2), ("test_gen", 4)):
        _write_jsonl(d / f"{split}.jsonl", [_chat(i + 100 * n) for i in range(n)])
    monkeypatch.setattr(amlft.resources, "sample_chat_dir", lambda: d)
    return d


def test_step_rehearsal_substitutes_the_sample_and_is_idempotent(tmp_path, monkeypatch, sample_dir):
    from amlft.data.step import prepare_run_data

    ctx = _ctx(tmp_path, monkeypatch, source="HuggingFaceH4/ultrachat_200k", rehearse=True, backend="azure")
    out = prepare_run_data(ctx)
    assert out["substituted"] is True and out["requested_source"] == "HuggingFaceH4/ultrachat_200k"
    assert Path(out["train_file"]).name == "train_sft.jsonl" and Path(out["invoke_file"]).name == "test_gen.jsonl"
    assert out["counts"]["train_sft"] == {"in": 12, "kept": 12, "rejected": 0}  # whole sample, not 5%
    assert ctx.record.output("data") == out
    for key in ("train_file", "test_file", "validation_file", "invoke_file", "report_path", "rejected_path",
                "data_hash", "source", "format", "substituted", "counts"):
        assert key in out
    mtime = Path(out["train_file"]).stat().st_mtime_ns
    assert prepare_run_data(ctx) == out
    assert Path(out["train_file"]).stat().st_mtime_ns == mtime  # reused, not rewritten


def test_step_offline_azure_without_rehearsal_fails_with_hint(tmp_path, monkeypatch, sample_dir):
    from amlft.data import step

    monkeypatch.setattr(step, "hub_reachable", lambda timeout=3.0: False)
    ctx = _ctx(tmp_path, monkeypatch, source="HuggingFaceH4/ultrachat_200k", backend="azure")
    with pytest.raises(DataError, match="Cannot reach the Hugging Face Hub") as info:
        step.prepare_run_data(ctx)
    assert "--rehearse" in info.value.hint


def test_step_local_file_holds_out_a_test_split_and_fails_on_bad_rows(tmp_path, monkeypatch):
    from amlft.data.step import prepare_run_data

    src = _write_jsonl(tmp_path / "mine.jsonl", [_chat(i) for i in range(20)])
    ctx = _ctx(tmp_path, monkeypatch, source=str(src), split_pc=None)
    out = prepare_run_data(ctx)
    assert out["substituted"] is False
    assert out["counts"] == {"train_sft": {"in": 18, "kept": 18, "rejected": 0},
                             "test_sft": {"in": 2, "kept": 2, "rejected": 0}}
    assert out["invoke_file"] == out["test_file"]
    with open(src, "a") as fh:
        fh.write('{"messages": []}\n')
    with pytest.raises(DataError, match=r"mine.jsonl:21: \[messages_empty\]"):
        prepare_run_data(ctx)


# ------------------------------------------------------------------ CLI
def _cli(args: list[str]) -> int:
    from amlft.cli.main import main

    try:
        main(args)
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


def test_cli_validate_exit_codes_and_problem_lines(tmp_path, capsys):
    corpus = Path(__file__).parent / "data" / "malformed_chat.jsonl"
    good = _write_jsonl(tmp_path / "good.jsonl", [_chat(1), _chat(2)])
    assert _cli(["data", "validate", str(good)]) == 0
    assert "all 2 rows are valid" in capsys.readouterr().out
    assert _cli(["data", "validate", str(corpus), "--max-problems", "3"]) == 1
    out = capsys.readouterr()
    assert f"{corpus}:2: [invalid_utf8]" in out.out and f"{corpus}:5:" not in out.out
    assert "and 11 more rejected row(s)" in out.out and "invalid_json=1" in out.out
    assert "14 of 16 rows" in out.err
    assert _cli(["data", "validate", str(corpus), "--json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["ok"] is False and doc["valid"] is False and doc["reasons"]["content_empty"] == 1


def test_cli_prepare_and_stats(tmp_path, capsys):
    src = _write_jsonl(tmp_path / "alpaca.jsonl", [{"instruction": f"Say {i}", "output": f"{i}"} for i in range(10)])
    assert _cli(["data", "prepare", str(src), "--out", str(tmp_path / "out"), "--test-fraction", "0.3",
                 "--seed", "1", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["format"] == "alpaca" and doc["counts"]["test_sft"]["kept"] == 3
    assert Path(doc["files"]["train_sft"]).exists() and Path(doc["report_path"]).exists()
    assert _cli(["data", "stats", str(tmp_path / "out" / "train_sft.jsonl"), "--epochs", "2", "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["splits"]["train_sft"]["rows"] == 7 and stats["splits"]["train_sft"]["turns_mean"] == 2
    assert stats["tokens_exact"] is False and stats["estimated_training_tokens"] > 0
    assert _cli(["data", "prepare", str(src), "--out", str(tmp_path / "o2"), "--column", "bad"]) == 2


@pytest.mark.parametrize("content", ["", "\n\n  \n"], ids=["empty", "blank-lines"])
def test_cli_empty_file_fails_validate_prepare_and_the_data_step(tmp_path, capsys, content):
    """An empty file is an error naming it, never a 0-row training split that fails later."""
    empty = tmp_path / "empty.jsonl"
    empty.write_text(content)
    assert _cli(["data", "validate", str(empty)]) == 1
    err = capsys.readouterr().err
    assert f"{empty} has no rows" in err
    assert _cli(["data", "prepare", str(empty), "--out", str(tmp_path / "out")]) == 1
    assert f"{empty} has no rows" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # nothing written
    profile = tmp_path / "p.yml"
    profile.write_text(f"backend: local\ndata:\n  source: {empty}\n")
    assert _cli(["data", "--profile", str(profile), "--json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["ok"] is False and f"{empty} has no rows" in doc["message"]


def test_cli_no_trainable_rows_fails_prepare_and_the_data_step(tmp_path, capsys):
    """Every row invalid: with --on-error skip prepare would have written a 0-row train split."""
    bad = _write_jsonl(tmp_path / "bad.jsonl", [{"messages": [{"role": "user", "content": "no answer"}]},
                                                 {"messages": []}, [1, 2]])
    assert _cli(["data", "validate", str(bad)]) == 1
    assert "3 of 3 rows" in capsys.readouterr().err
    assert _cli(["data", "prepare", str(bad), "--out", str(tmp_path / "out"), "--on-error", "skip"]) == 1
    err = capsys.readouterr().err
    assert f"{bad} has no trainable rows: all 3 row(s) were rejected" in err and "not_object=1" in err
    assert not (tmp_path / "out").exists()
    profile = tmp_path / "p.yml"
    profile.write_text(f"backend: local\ndata:\n  source: {bad}\n  on_error: skip\n")
    assert _cli(["data", "--profile", str(profile)]) == 1
    assert f"{bad} has no trainable rows" in capsys.readouterr().err
    # one valid row is enough to go on
    _write_jsonl(bad, [_chat(1), {"messages": []}])
    assert _cli(["data", "prepare", str(bad), "--out", str(tmp_path / "out"), "--on-error", "skip"]) == 0


def test_step_local_backend_offline_refuses_to_swap_data(tmp_path, monkeypatch, sample_dir):
    """Outside a rehearsal, training on the sample when ultrachat was asked for would be a lie."""
    from amlft.data import step

    monkeypatch.setattr(step, "hub_reachable", lambda timeout=3.0: False)
    ctx = _ctx(tmp_path, monkeypatch, source="HuggingFaceH4/ultrachat_200k", backend="local")
    with pytest.raises(DataError) as exc:
        step.prepare_run_data(ctx)
    assert "HuggingFaceH4/ultrachat_200k" in exc.value.message
    assert "amlft:sample_chat" in exc.value.hint


@pytest.mark.parametrize("line", [
    b'{"prompt": "caf\xc3\xa9 \\u00e9 \\ud83d\\ude00", "n": [1, 2.5, -0.0, 1e300, true, null], "o": {"a": {}}}',
    b'{"a": 1, "a": 2}',                       # a repeated key: the last one wins, as in json.loads
    b'{"x": NaN, "y": -Infinity}',             # accepted by json.loads, not by orjson
    b'{"x": "\\ud800"}',                       # a lone surrogate escape
    b'{"x": "bad \xff byte"}',                 # invalid UTF-8
    b'{"x": 1} trailing', b'{"x": "tab\there"}', b"[1, 2]", b'"just a string"',
])
def test_fast_parse_agrees_with_the_standard_library_or_defers_to_it(line: bytes) -> None:
    """orjson parses a row first; whatever it accepts must be what json.loads makes of the line,
    and whatever it refuses goes to the standard library, whose verdict (value or error) stands."""
    from amlft.data.io import UNPARSED, parse_fast, parse_line

    fast = parse_fast(line)
    try:
        want: object = parse_line(line.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        want = type(exc)
    if fast is UNPARSED:
        return
    assert want is not UnicodeDecodeError and not isinstance(want, type), (line, fast)
    assert json.dumps(fast, sort_keys=True) == json.dumps(want, sort_keys=True)


def test_rows_the_fast_parser_refuses_or_changes_are_judged_and_written_as_before(tmp_path: Path) -> None:
    """NaN and lone surrogates are JSON Python accepts (the rows are kept); bad UTF-8 and bad
    JSON are rejected with the standard library's reasons; an integer past 64 bits in a row that
    is rewritten (no prompt_id: one is filled in) comes out exact, not as orjson's float."""
    src = tmp_path / "mixed.jsonl"
    no_id = {k: v for k, v in _chat(4).items() if k != "prompt_id"}
    src.write_bytes(b"\n".join([
        json.dumps(_chat(1)).encode(),
        json.dumps({**_chat(2), "score": float("nan")}).encode(),
        json.dumps(_chat(3, answer="half a pair: \ud800")).encode(),
        b'{"prompt": "x", "messages": "\xff"}',
        b'{"prompt": "x",',
        json.dumps({**no_id, "big": 12345678901234567890123}).encode(),
    ]) + b"\n")
    result = prepare(src, tmp_path / "out", PrepareOptions(on_error="skip"))
    totals = result.report["totals"]
    assert (totals["in"], totals["kept"], totals["rejected"]) == (6, 4, 2)
    reasons = json.dumps(result.report)
    assert "invalid_utf8" in reasons and "invalid_json" in reasons
    written = (tmp_path / "out" / "train_sft.jsonl").read_text(encoding="utf-8", errors="surrogatepass")
    assert '"big": 12345678901234567890123' in written and "e+22" not in written
