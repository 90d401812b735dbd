"""JSONL reading helpers the streamed stages build on."""

import pytest

from ragtune.io import JsonlError, count_records, iter_jsonl


def test_only_parses_the_wanted_records_and_counts_skip_blank_lines(tmp_path):
    path = tmp_path / "chunks.jsonl"
    # a BOM, blank and whitespace-only lines (not records), and a malformed line that is never wanted
    path.write_text('\ufeff{"i": 0}\n\n{"i": 1}\n   \n{not json\n{"i": 3}\n', encoding="utf-8")
    assert count_records(path) == 4
    assert [rec for _, rec in iter_jsonl(path, only={0, 3})] == [{"i": 0}, {"i": 3}]
    assert [line for line, _ in iter_jsonl(path, only={1})] == [3]  # the file's line number, for messages
    with pytest.raises(JsonlError, match=r"chunks.jsonl:5: not valid JSON"):
        list(iter_jsonl(path))
    with pytest.raises(JsonlError, match=r":5: "):
        list(iter_jsonl(path, only={2}))
