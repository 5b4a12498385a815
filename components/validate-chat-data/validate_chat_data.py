"""Azure ML command component: validate (or prepare) chat fine-tuning data before training.

Runs amlft's own data verbs on files already in a datastore, so a bad row stops the
pipeline in a minute on a CPU instead of failing hours into a GPU fine-tune:

- mode `validate`: `amlft data validate FILE` for each split; any invalid row fails the
  step (with file, line, field and reason in the log); valid files pass through unchanged.
- mode `prepare`: `amlft data prepare FILE --out DIR` for each split (format conversion,
  `--on-error skip` sets bad rows aside); the prepared rows go to the outputs.

Either way the outputs are the files the fine-tune should read, and `report/` holds each
split's report (and rejected rows) for the run's lineage. Standard library only: amlft is
invoked as a subprocess (`python -m amlft.cli.main`), from the code snapshot's src/.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

# The amlft verbs this component runs (tests check they exist with these options).
AMLFT = [sys.executable, "-m", "amlft.cli.main"]
VALIDATE = ["data", "validate"]
PREPARE = ["data", "prepare"]
FORMATS = ["auto", "ultrachat", "openai", "alpaca", "sharegpt"]


def amlft_command(mode: str, source: Path, *, fmt: str, on_error: str, work: Path) -> list[str]:
    if mode == "validate":
        return [*AMLFT, *VALIDATE, str(source), "--format", fmt, "--json"]
    return [*AMLFT, *PREPARE, str(source), "--out", str(work), "--format", fmt, "--on-error", on_error, "--json"]


def _input_file(path: Path) -> Path:
    """A uri_file input is a file; tolerate a mounted folder holding exactly one .jsonl file."""
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in (".jsonl", ".json"))
        if len(files) != 1:
            raise SystemExit(f"{path} is a folder with {len(files)} JSON Lines files; pass one file.")
        return files[0]
    if not path.is_file():
        raise SystemExit(f"input {path} does not exist")
    return path


def _prepared_file(work: Path) -> Path:
    files = sorted(p for p in work.glob("*.jsonl") if p.name != "rejected.jsonl")
    if len(files) != 1:
        raise SystemExit(f"amlft data prepare wrote {[p.name for p in files]} in {work}; expected one split file.")
    return files[0]


def process_split(split: str, source: Path, dest: Path, report_dir: Path, *, mode: str, fmt: str,
                  on_error: str) -> int:
    """Validate/prepare one split; write the file to use to `dest`. Returns amlft's exit code."""
    source = _input_file(source)
    dest.parent.mkdir(parents=True, exist_ok=True)
    report_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f"amlft-{split}-") as tmp:
        work = Path(tmp) / "prepared"
        cmd = amlft_command(mode, source, fmt=fmt, on_error=on_error, work=work)
        print(f"[{split}] amlft {' '.join(cmd[len(AMLFT):])}", flush=True)
        # stderr (the human-readable problems) streams to the job log; stdout is the JSON result
        result = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=False)
        (report_dir / f"{split}.{mode}.json").write_text(result.stdout, encoding="utf-8")
        if result.returncode != 0:
            print(f"[{split}] amlft {' '.join(cmd[len(AMLFT):len(AMLFT) + 2])} failed with exit code {result.returncode}; "
                  f"see the problems above and report/{split}.{mode}.json", file=sys.stderr, flush=True)
            return result.returncode
        if mode == "validate":
            shutil.copyfile(source, dest)
        else:
            shutil.copyfile(_prepared_file(work), dest)
            for name in ("report.json", "rejected.jsonl"):
                if (work / name).is_file():
                    shutil.copyfile(work / name, report_dir / f"{split}.{name}")
    print(f"[{split}] ok -> {dest}", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Validate or prepare chat data with amlft (Azure ML component).")
    parser.add_argument("--train", type=Path, required=True)
    parser.add_argument("--test", type=Path, required=True)
    parser.add_argument("--train-out", type=Path, required=True)
    parser.add_argument("--test-out", type=Path, required=True)
    parser.add_argument("--report-dir", type=Path, required=True)
    parser.add_argument("--mode", choices=["validate", "prepare"], default="validate")
    parser.add_argument("--format", dest="fmt", choices=FORMATS, default="auto")
    parser.add_argument("--on-error", choices=["fail", "skip"], default="fail")
    args = parser.parse_args(argv)

    # Make the code snapshot's src/ importable for the amlft subprocesses, wherever we run from.
    src = Path(__file__).resolve().parents[2] / "src"
    if (src / "amlft").is_dir():
        os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(src), os.environ.get("PYTHONPATH")) if p)

    failed = 0
    for split, source, dest in (("train", args.train, args.train_out), ("test", args.test, args.test_out)):
        code = process_split(split, source, dest, args.report_dir, mode=args.mode, fmt=args.fmt,
                             on_error=args.on_error)
        failed = failed or code
    return failed


if __name__ == "__main__":
    sys.exit(main())
