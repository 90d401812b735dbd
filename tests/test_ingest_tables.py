"""ingest on bad table records: each class of bad input built in a tmp folder and run through the stage
(`run_ingest`), checked on the files written: an error that says what, where and how to fix, or a counted
quarantine record; never a record that is silently lost or kept as a Python repr."""

import codecs
import json
from pathlib import Path
from typing import Any

import pytest
from conftest import shipped_params

from ragtune.chunking import run_chunk
from ragtune.errors import UserError
from ragtune.ingest import IngestError, run_ingest
from ragtune.io import EmptyInputError
from ragtune.mining import run_negatives
from ragtune.pairs.run import run_pairs
from ragtune.paths import Paths

BODY = "Nhân viên được nghỉ phép năm mười bốn ngày và đăng ký trên cổng LamHR trước ba ngày làm việc."
OTHER = "Cài đặt HL-VPN trên máy tính xách tay trước khi làm việc từ xa, theo hướng dẫn của phòng IT."


def write(path: Path, content: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content, encoding="utf-8")
    return path


def jsonl(path: Path, records: list[Any]) -> Path:
    return write(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def ingest(root: Path, documents: list[Any], queries: list[Any] | None = None) -> dict[str, Any]:
    """Run the stage on ``root/src``; returns what it wrote: documents, queries, quarantine and metrics."""
    section = shipped_params("ingest", root="src", documents=documents, queries=queries or [])
    paths = Paths(root)
    run_ingest(section, paths)
    return {
        "documents": read_jsonl(paths.documents),
        "queries": read_jsonl(paths.queries),
        "quarantine": read_jsonl(paths.ingest_quarantine),
        "metrics": json.loads(paths.metrics("ingest").read_text(encoding="utf-8")),
    }


def reasons(out: dict[str, Any]) -> list[tuple[str, str, str]]:
    return [(q["kind"], q["reason"], q["source"]) for q in out["quarantine"]]


def balanced(out: dict[str, Any]) -> None:
    for kind in ("documents", "queries"):
        m = out["metrics"][kind]
        assert m["read"] == m["kept"] + m["quarantined"], kind


def xlsx(path: Path, rows: list[list[Any]], merged: list[str] = (), extra_sheet: str | None = None) -> Path:
    import openpyxl

    workbook = openpyxl.Workbook()
    ws = workbook.active
    ws.title = "Tài liệu"
    for row in rows:
        ws.append(row)
    for cells in merged:
        ws.merge_cells(cells)
    if extra_sheet:
        workbook.create_sheet(extra_sheet)
    path.parent.mkdir(parents=True, exist_ok=True)
    workbook.save(path)
    return path


# ---------------------------------------------------------------- 1. CSV unclosed quote


@pytest.mark.parametrize("later_quote", [False, True], ids=["runs-to-eof", "closes-on-a-later-quote"])
def test_unclosed_quote_is_quarantined_and_the_rows_after_it_are_read(tmp_path: Path, later_quote: bool) -> None:
    last = f'D,"Tiêu đề, có phẩy",{BODY} Dòng D.' if later_quote else f"D,Tiêu đề D,{BODY} Dòng D."
    write(
        tmp_path / "src/docs.csv",
        f'id,title,text\nA,Tiêu đề A,"{BODY} Dòng A mở ngoặc mà không đóng.\n'
        f"B,Tiêu đề B,{BODY} Dòng B.\nC,Tiêu đề C,{BODY} Dòng C.\n{last}\n",
    )
    out = ingest(tmp_path, ["docs.csv"])
    assert reasons(out) == [("document", "unclosed_quote", "src/docs.csv:2")]
    error = out["quarantine"][0]["record"]["error"]
    assert "quote opens on line 2" in error and "close the quote" in error
    assert [d["doc_id"] for d in out["documents"]] == ["B", "C", "D"]
    assert out["documents"][0] == {
        "doc_id": "B", "title": "Tiêu đề B", "text": f"{BODY} Dòng B.", "source": "src/docs.csv:3", "metadata": {}
    }  # fmt: skip
    if later_quote:
        assert out["documents"][2]["title"] == "Tiêu đề, có phẩy"
    assert out["metrics"]["documents"]["read"] == 4
    balanced(out)


def test_quoted_field_with_line_breaks_is_kept_whole(tmp_path: Path) -> None:
    write(tmp_path / "src/docs.csv", f'id,text\nA,"{BODY}\n\nĐoạn hai, có phẩy."\nB,"{OTHER}"\n')
    out = ingest(tmp_path, ["docs.csv"])
    assert out["quarantine"] == []
    assert out["documents"][0]["text"] == f"{BODY}\n\nĐoạn hai, có phẩy."


def test_unclosed_quote_in_a_question_file(tmp_path: Path) -> None:
    jsonl(tmp_path / "src/docs.jsonl", [{"id": "A", "text": BODY}])
    write(tmp_path / "src/q.csv", 'id,query,positives\nq1,"Nghỉ phép mấy ngày?,A\nq2,Đăng ký ở đâu?,A\n')
    out = ingest(tmp_path, ["docs.jsonl"], ["q.csv"])
    assert reasons(out) == [("query", "unclosed_quote", "src/q.csv:2")]
    assert [q["query_id"] for q in out["queries"]] == ["q2"]
    assert (out["metrics"]["queries"]["read"], out["metrics"]["queries"]["quarantined"]) == (2, 1)


# ---------------------------------------------------------------- 2. empty sources, empty corpus, empty stage inputs


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        ("docs.csv", "id,title,text\n", "has only a header"),
        ("docs.csv", "", "is empty"),
        ("docs.jsonl", "\n\n", "is empty"),
    ],
)
def test_empty_or_header_only_table_is_an_error(tmp_path: Path, name: str, content: str, expected: str) -> None:
    write(tmp_path / f"src/{name}", content)
    jsonl(tmp_path / "src/ok.jsonl", [{"id": "A", "text": BODY}])
    with pytest.raises(IngestError) as err:
        ingest(tmp_path, ["ok.jsonl", name])
    message = str(err.value)
    assert f"src/{name}" in message and expected in message and "ingest.documents[1]" in message


@pytest.mark.parametrize("header", [True, False], ids=["header-only", "blank"])
def test_empty_xlsx_sheet_is_an_error_naming_the_sheet(tmp_path: Path, header: bool) -> None:
    xlsx(tmp_path / "src/docs.xlsx", [["id", "text"]] if header else [], extra_sheet="Dữ liệu")
    with pytest.raises(IngestError) as err:
        ingest(tmp_path, ["docs.xlsx"])
    assert "src/docs.xlsx, sheet 'Tài liệu'" in str(err.value)
    assert "Dữ liệu" in str(err.value) and "ingest.documents[0].sheet" in str(err.value)


def test_header_only_question_file_is_an_error(tmp_path: Path) -> None:
    jsonl(tmp_path / "src/docs.jsonl", [{"id": "A", "text": BODY}])
    write(tmp_path / "src/q.csv", "id,query,positives\n")
    with pytest.raises(IngestError, match=r"src/q.csv.*ingest.queries\[0\].*has only a header"):
        ingest(tmp_path, ["docs.jsonl"], ["q.csv"])


def test_a_corpus_with_no_document_kept_is_an_error_after_writing_the_quarantine(tmp_path: Path) -> None:
    jsonl(tmp_path / "src/docs.jsonl", [{"id": "A", "text": "ngắn"}, {"id": "B", "text": ""}])
    with pytest.raises(IngestError, match="kept no document: 2 read, all quarantined"):
        ingest(tmp_path, ["docs.jsonl"])
    quarantine = read_jsonl(Paths(tmp_path).ingest_quarantine)
    assert [q["reason"] for q in quarantine] == ["too_short", "empty_text"]


def test_question_sources_with_no_question_kept_is_an_error(tmp_path: Path) -> None:
    jsonl(tmp_path / "src/docs.jsonl", [{"id": "A", "text": BODY}])
    jsonl(tmp_path / "src/q.jsonl", [{"id": "q1", "query": "Một?", "positives": ["NOPE"]}])
    with pytest.raises(IngestError, match="kept no query"):
        ingest(tmp_path, ["docs.jsonl"], ["q.jsonl"])


def test_chunk_pairs_and_negatives_refuse_an_empty_input(tmp_path: Path) -> None:
    paths = Paths(tmp_path)
    for path in (paths.documents, paths.queries, paths.chunks):
        write(path, "")
    model = shipped_params("model", embedder="unused")
    with pytest.raises(EmptyInputError, match=r"documents.jsonl: no records.*ingest"):
        run_chunk(model, shipped_params("chunk"), 256, paths)
    with pytest.raises(EmptyInputError, match=r"documents\.jsonl: no records"):
        run_pairs(shipped_params("pairs"), model, shipped_params("bm25"), paths)
    with pytest.raises(EmptyInputError, match=r"chunks\.jsonl: no records"):
        run_negatives(shipped_params("negatives"), model, shipped_params("bm25"), paths)
    jsonl(paths.chunks, [{"chunk_id": "A#0", "doc_id": "A", "text": BODY}])
    write(paths.train, "")  # run_pairs removed its outputs before refusing
    jsonl(paths.synthetic, [{"query_id": "s1", "query": "Nghỉ phép?", "positive_chunk_ids": []}])
    with pytest.raises(EmptyInputError, match="no pair with a positive chunk"):
        run_negatives(shipped_params("negatives"), model, shipped_params("bm25"), paths)
    assert issubclass(EmptyInputError, UserError)


# ---------------------------------------------------------------- 3. XLSX merged cells


def test_xlsx_merged_cells_fill_every_row_of_the_range(tmp_path: Path) -> None:
    rows = [
        ["id", "text", "department"],
        ["A", BODY, "Nhân sự"],
        ["B", OTHER, None],
        ["C", BODY + " Bản C.", None],
        ["D", OTHER + " Bản D.", "IT"],
    ]
    xlsx(tmp_path / "src/docs.xlsx", rows, merged=["C2:C4"])
    out = ingest(tmp_path, ["docs.xlsx"])
    assert [d["metadata"].get("department") for d in out["documents"]] == ["Nhân sự", "Nhân sự", "Nhân sự", "IT"]


# ---------------------------------------------------------------- 4. list / dict / number cells


def test_list_text_is_joined_as_paragraphs_and_other_types_are_quarantined(tmp_path: Path) -> None:
    jsonl(
        tmp_path / "src/docs.jsonl",
        [
            {"id": "A", "title": ["Nghỉ", "phép"], "text": ["Đoạn một về nghỉ phép năm.", "Đoạn hai về đăng ký."]},
            {"id": "B", "text": {"vi": BODY}},
            {"id": "C", "text": 123456789012345678901},
            {"id": "D", "text": [BODY, ["lồng"]]},
            {"id": "E", "title": {"x": 1}, "text": OTHER},
            {"id": "F", "title": 2024, "text": OTHER + " Năm."},
        ],
    )
    jsonl(
        tmp_path / "src/q.jsonl",
        [
            {"id": "q1", "query": ["Nghỉ phép", "mấy ngày?"], "positives": ["A"]},
            {"id": "q2", "query": {"vi": "Nghỉ phép?"}, "positives": ["A"]},
            {"id": "q3", "query": 42, "positives": ["A"]},
        ],
    )
    out = ingest(tmp_path, ["docs.jsonl"], ["q.jsonl"])
    assert out["documents"][0]["text"] == "Đoạn một về nghỉ phép năm.\n\nĐoạn hai về đăng ký."
    assert out["documents"][0]["title"] == "Nghỉ phép"
    assert out["documents"][1]["title"] == "2024"
    assert out["queries"][0]["query"] == "Nghỉ phép mấy ngày?"
    assert reasons(out) == [
        ("document", "text_not_a_string", "src/docs.jsonl:2"),
        ("document", "text_not_a_string", "src/docs.jsonl:3"),
        ("document", "text_not_a_string", "src/docs.jsonl:4"),
        ("document", "title_not_a_string", "src/docs.jsonl:5"),
        ("query", "query_not_a_string", "src/q.jsonl:2"),
        ("query", "query_not_a_string", "src/q.jsonl:3"),
    ]
    assert "holds a dict" in out["quarantine"][0]["record"]["error"]
    assert out["metrics"]["quarantine_reasons"]["text_not_a_string"] == 3
    assert not any("{'" in d["text"] or "['" in d["text"] for d in out["documents"])
    balanced(out)


# ---------------------------------------------------------------- 5. duplicated header column


@pytest.mark.parametrize("fmt", ["csv", "xlsx"])
def test_duplicated_header_column_is_an_error(tmp_path: Path, fmt: str) -> None:
    rows = [["id", "text", "text"], ["A", BODY, OTHER]]
    if fmt == "csv":
        write(tmp_path / "src/docs.csv", "\n".join(",".join(r) for r in rows) + "\n")
    else:
        xlsx(tmp_path / "src/docs.xlsx", rows)
    with pytest.raises(IngestError) as err:
        ingest(tmp_path, [f"docs.{fmt}"])
    message = str(err.value)
    assert f"docs.{fmt}" in message and "column 'text' appears 2 times" in message and "text_2" in message


def test_duplicated_key_in_a_jsonl_object_is_quarantined(tmp_path: Path) -> None:
    good = "".join(f'{{"id": "{i}", "text": "{BODY} {i}"}}\n' for i in "ACDE")
    write(tmp_path / "src/docs.jsonl", f'{good}{{"id": "B", "text": "x", "text": "y"}}\n')
    out = ingest(tmp_path, ["docs.jsonl"])
    assert reasons(out) == [("document", "malformed_json", "src/docs.jsonl:5")]
    assert "key 'text' appears 2 times" in out["quarantine"][0]["record"]["error"]


# ---------------------------------------------------------------- 6. duplicate sidecar rows, duplicate ids


def test_two_sidecar_rows_for_one_file_are_quarantined_not_silently_merged(tmp_path: Path) -> None:
    write(tmp_path / "src/d/a.md", BODY)
    write(tmp_path / "src/d/meta.csv", "file,department\na.md,Nhân sự\n./a.md,IT\n")
    out = ingest(tmp_path, [{"path": "d", "metadata": "d/meta.csv"}])
    assert out["documents"][0]["metadata"] == {"department": "Nhân sự"}
    assert reasons(out) == [("metadata", "duplicate_sidecar_row", "src/d/meta.csv:3")]
    assert out["quarantine"][0]["record"]["duplicate_of"] == "src/d/meta.csv:2"
    assert out["metrics"]["documents"]["quarantined"] == 0  # a sidecar row is no document
    balanced(out)


def test_duplicate_id_across_sources_flags_the_questions_that_name_it(tmp_path: Path) -> None:
    jsonl(tmp_path / "src/a.jsonl", [{"id": "X", "text": BODY}, {"id": "Y", "text": OTHER}])
    jsonl(tmp_path / "src/b.jsonl", [{"id": "X", "text": OTHER + " Bản khác."}, {"id": "Y", "text": OTHER}])
    questions = [
        {"id": "q1", "query": "Nghỉ phép mấy ngày?", "positives": ["X"]},
        {"id": "q2", "query": "Cài VPN thế nào?", "positives": ["X", "Y"]},
        {"id": "q3", "query": "VPN?", "positives": ["Y"]},  # Y's duplicate has the same text: not ambiguous
    ]
    jsonl(tmp_path / "src/q.jsonl", questions)
    out = ingest(tmp_path, ["a.jsonl", "b.jsonl"], ["q.jsonl"])
    assert reasons(out) == [
        ("document", "duplicate_id", "src/b.jsonl:1"),
        ("document", "duplicate_id", "src/b.jsonl:2"),
        ("query", "ambiguous_positive", "src/q.jsonl:1"),
        ("query", "ambiguous_positive", "src/q.jsonl:2"),
    ]
    assert out["quarantine"][0]["record"]["duplicate_of"] == "src/a.jsonl:1"
    hint = out["quarantine"][2]["record"]["hint"]
    assert "src/a.jsonl:1 and src/b.jsonl:1" in hint
    assert [(q["query_id"], q["positive_doc_ids"]) for q in out["queries"]] == [("q2", ["Y"]), ("q3", ["Y"])]
    assert out["metrics"]["queries"]["ambiguous_positive_ids"] == 2
    assert (out["metrics"]["queries"]["read"], out["metrics"]["queries"]["quarantined"]) == (3, 1)
    balanced(out)


# ---------------------------------------------------------------- 7. unknown positives: say why


def test_positive_naming_a_quarantined_document_says_so(tmp_path: Path) -> None:
    jsonl(tmp_path / "src/docs.jsonl", [{"id": "A", "text": BODY}, {"id": "tiny", "text": "ngắn"}])
    jsonl(
        tmp_path / "src/q.jsonl",
        [
            {"id": "q1", "query": "Một?", "positives": ["tiny"]},
            {"id": "q2", "query": "Hai?", "positives": ["A", "tiny", "NOPE"]},
        ],
    )
    out = ingest(tmp_path, ["docs.jsonl"], ["q.jsonl"])
    assert reasons(out) == [
        ("document", "too_short", "src/docs.jsonl:2"),
        ("query", "quarantined_positive", "src/q.jsonl:1"),
        ("query", "unknown_positive", "src/q.jsonl:2"),
    ]
    assert out["quarantine"][1]["record"]["hint"] == "document `tiny` was quarantined: too_short (src/docs.jsonl:2)"
    assert out["quarantine"][2]["record"]["unknown_positive_ids"] == ["tiny", "NOPE"]
    balanced(out)


@pytest.mark.parametrize("cell", ["G1 G2", "G1|G2", "G1 | G2"])
def test_positives_with_an_unaccepted_separator_get_a_hint(tmp_path: Path, cell: str) -> None:
    jsonl(tmp_path / "src/docs.jsonl", [{"id": "G1", "text": BODY}, {"id": "G2", "text": OTHER}])
    write(tmp_path / "src/q.csv", f"id,query,positives\nq1,Nghỉ phép?,{cell}\nq2,VPN?,G2\n")
    out = ingest(tmp_path, ["docs.jsonl"], ["q.csv"])
    assert reasons(out) == [("query", "unknown_positive", "src/q.csv:2")]
    hint = out["quarantine"][0]["record"]["hint"]
    assert "separate several ids with ',' or ';'" in hint and '["G1", "G2"]' in hint and "G1, G2 are known" in hint


# ---------------------------------------------------------------- 8. balances from the records


def test_balance_counts_quarantined_queries_from_the_records(tmp_path: Path) -> None:
    jsonl(tmp_path / "src/docs.jsonl", [{"id": "A", "text": BODY}])
    write(
        tmp_path / "src/q.jsonl",
        '{"id": "q1", "query": "Một?", "positives": ["A", "ZZZ"]}\nnot json\n'
        '{"id": "q3", "query": "Ba?", "positives": []}\n{"id": "q1", "query": "Trùng?", "positives": ["A"]}\n'
        '{"id": "q5", "query": "Năm?", "positives": ["A"]}\n',
    )
    out = ingest(tmp_path, ["docs.jsonl"], ["q.jsonl"])
    m = out["metrics"]["queries"]
    # q1 is kept with a record (its unknown ZZZ); the other three records are three questions set aside
    assert (m["read"], m["kept"], m["quarantined"]) == (5, 2, 3)
    assert len([q for q in out["quarantine"] if q["kind"] == "query"]) == 4


@pytest.mark.parametrize(("magic", "what"), [(b"PK\x03\x04", "ZIP package"), (b"\xd0\xcf\x11\xe0", "old Excel .xls")])
@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_a_spreadsheet_named_csv_or_jsonl_is_refused_with_the_fix(tmp_path: Path, magic: bytes, what: str, suffix: str):
    """Decoded as text, an .xlsx renamed .csv gave 'has only a header' (a header of binary garbage)."""
    path = tmp_path / "src" / f"bang{suffix}"
    path.parent.mkdir(parents=True)
    path.write_bytes(magic + bytes(range(256)) * 4)
    with pytest.raises(IngestError, match=rf"bang{suffix}: this {suffix} file is an? {what}.*not text"):
        ingest(tmp_path, [{"path": f"bang{suffix}"}])


# ---------------------------------------------------------------- streamed JSONL tables


def test_utf8_jsonl_is_streamed_with_the_rows_lines_and_bad_rows_of_the_in_memory_path(tmp_path: Path) -> None:
    from ragtune.ingest import tables

    lines = ['{"id": "a", "text": "Điều 1"}', "", "not json", '{"id": "b", "text": "x", "text": "y"}', "[1]"]
    lines += ['{"id": "c", "text": "  "}\r', '{"id": "d", "text": ["ma", "túy"]}']
    body = "\n".join(lines) + "\n"
    streamed = tmp_path / "s.jsonl"
    streamed.write_bytes(codecs.BOM_UTF8 + body.encode("utf-8"))
    legacy = tmp_path / "l.jsonl"
    legacy.write_bytes(body.replace("Điều", "Đô").encode("cp1258"))  # not UTF-8: read whole, decoded
    s = tables.read_table(streamed, max_bad_fraction=0.9)
    assert isinstance(s.rows, tables.JsonlRows) and len(s.rows) == 3 and s.rows
    assert [r.line for r in s.rows] == [1, 6, 7]
    assert [r.record for r in s.rows] == [r.record for r in s.rows]  # re-iterable: read from disk each time
    assert next(iter(s.rows)).record == {"id": "a", "text": "Điều 1"}
    assert [(b.line, b.reason) for b in s.bad] == [(3, "malformed_json"), (4, "malformed_json"), (5, "malformed_json")]
    assert s.columns == ["id", "text"]
    monkey = tables._is_utf8
    try:
        tables._is_utf8 = lambda path: False  # the in-memory path on the same file gives the same table
        m = tables.read_table(streamed, max_bad_fraction=0.9)
    finally:
        tables._is_utf8 = monkey
    assert isinstance(m.rows, list)
    assert [(r.line, r.record) for r in m.rows] == [(r.line, r.record) for r in s.rows]
    assert [(b.line, b.raw, b.error) for b in m.bad] == [(b.line, b.raw, b.error) for b in s.bad]
    assert isinstance(tables.read_table(legacy, max_bad_fraction=0.9).rows, list)


def test_ingest_into_a_sink_writes_what_the_in_memory_run_returns(tmp_path: Path) -> None:
    from ragtune.ingest import ingest
    from ragtune.ingest.config import load_config
    from ragtune.io import JsonlSink, read_jsonl

    docs = [{"id": f"d{i}", "text": f"{BODY} Số {i % 5}."} for i in range(12)] + [{"id": "d3", "text": BODY + " khác"}]
    jsonl(tmp_path / "docs.jsonl", docs)
    config = load_config({"documents": [{"path": "docs.jsonl"}], "queries": []}, tmp_path)
    in_memory = ingest(config)
    with JsonlSink(tmp_path / "out.jsonl") as sink:
        streamed = ingest(config, sink=sink)
    assert streamed.documents == [] and read_jsonl(tmp_path / "out.jsonl") == in_memory.documents
    assert streamed.metrics == in_memory.metrics and streamed.quarantine == in_memory.quarantine
    assert {q["reason"] for q in in_memory.quarantine} == {"duplicate_text", "duplicate_id"}
