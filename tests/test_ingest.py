"""ingest: every format, every bad input (quarantined or a hard error), determinism, ALQAC-shaped params."""

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from ragtune.ingest import IngestError, IngestResult, ingest, load_config, parse_positives, reflow_pdf_text

REPO = Path(__file__).resolve().parents[1]
FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"
BODY = "Nhân viên được nghỉ phép năm mười bốn ngày và đăng ký trên cổng LamHR trước ba ngày làm việc."


def write(path: Path, content: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


def jsonl(path: Path, records: list[Any]) -> Path:
    lines = [r if isinstance(r, str) else json.dumps(r, ensure_ascii=False) for r in records]
    return write(path, "\n".join(lines) + "\n")


def run(root: Path, documents: list[Any], queries: list[Any] | None = None, **extra: Any) -> IngestResult:
    section = {"root": ".", "documents": documents, "queries": queries or [], **extra}
    return ingest(load_config(section, repo=root))


def reasons(result: IngestResult) -> list[tuple[str, str]]:
    return [(q["reason"], q["source"]) for q in result.quarantine]


# ---------------------------------------------------------------- formats


def make_docx(path: Path) -> Path:
    import docx

    d = docx.Document()
    d.core_properties.title = "Chính sách công tác phí"
    d.add_heading("Phạm vi áp dụng", level=1)
    d.add_paragraph(BODY)
    d.add_paragraph("Đặt vé trước năm ngày", style="List Bullet")
    table = d.add_table(rows=2, cols=2)
    for r, row in enumerate([("Hạng", "Mức"), ("Nhân viên", "500.000 đồng")]):
        for c, value in enumerate(row):
            table.cell(r, c).text = value
    path.parent.mkdir(parents=True, exist_ok=True)
    d.save(str(path))
    return path


def make_pdf(path: Path) -> Path:
    from fpdf import FPDF

    pdf = FPDF()
    pdf.add_page()
    pdf.add_font("DejaVu", fname=FONT)
    pdf.set_font("DejaVu", size=11)
    pdf.set_title("Báo cáo sự cố tháng 3")
    pdf.multi_cell(0, 6, "1. Tóm tắt sự cố", new_x="LMARGIN", new_y="NEXT")
    pdf.multi_cell(
        0,
        6,
        BODY + " " + BODY + " Hệ thống được khôi phục lúc 11:31 sau khi gia hạn chứng chỉ.",
        new_x="LMARGIN",
        new_y="NEXT",
    )
    pdf.multi_cell(0, 6, "2. Nguyên nhân", new_x="LMARGIN", new_y="NEXT")
    pdf.multi_cell(
        0,
        6,
        "Token của nhà cung cấp DNS đã bị thu hồi nhưng không được cập nhật vào cụm.",
        new_x="LMARGIN",
        new_y="NEXT",
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    pdf.output(str(path))
    return path


HTML = """<!DOCTYPE html><html><head><title>Trang – Cổng tri thức</title><style>p{color:red}</style></head>
<body><nav><a href="/">Trang chủ</a></nav><div class="breadcrumb">Trang chủ › CNTT</div>
<main><h1>Hướng dẫn cấu hình MFA</h1>
<p>Mọi tài khoản   HL SSO
  bắt buộc bật <strong>MFA</strong> trong 7 ngày.</p>
<h2>Phương thức</h2>
<ul><li><p>Ứng dụng TOTP</p></li><li>Khóa FIDO2</li></ul>
<table><tr><th>Phương thức</th><th>Ghi chú</th></tr>
  <tr><td>SMS OTP</td><td>Không chấp nhận</td></tr></table>
<script>alert(1)</script></main><footer>© Hồng Lam</footer></body></html>"""


def test_folder_of_every_format_with_sidecar_and_front_matter(tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    write(docs / "a-policy.md", f"---\nid: FM-1\ntitle: Tiêu đề front matter\nversion: 2\n---\n# Nghỉ phép\n\n{BODY}\n")
    write(docs / "sub/guide.md", f"# Hướng dẫn VPN\n\n{BODY}\n")
    write(docs / "notes.txt", f"Ghi chú vận hành\n\n{BODY}\n")
    make_docx(docs / "travel.docx")
    make_pdf(docs / "incident.pdf")
    write(docs / "mfa.html", HTML)
    write(docs / "ignored.csv", "not,a,document\n")
    write(docs / "meta.csv", "file,id,department,tags\na-policy.md,POL-001,Nhân sự,nghỉ phép;phúc lợi\n")
    result = run(tmp_path, [{"path": "docs", "metadata": "docs/meta.csv"}])
    # a table in a document folder is not a document: counted and listed (tests/test_ingest_files.py has the rest)
    assert [(q["kind"], q["reason"]) for q in result.quarantine] == [("file", "unsupported_format:.csv")]
    by_id = {d["doc_id"]: d for d in result.documents}
    assert list(by_id) == ["POL-001", "incident", "mfa", "notes", "sub/guide", "travel"]  # sorted paths
    pol = by_id["POL-001"]  # sidecar id wins over front matter; front matter title and extra keys kept
    assert pol["title"] == "Tiêu đề front matter"
    assert pol["metadata"] == {"department": "Nhân sự", "tags": ["nghỉ phép", "phúc lợi"], "version": 2}
    assert pol["text"].startswith("# Nghỉ phép\n\nNhân viên") and "---" not in pol["text"]
    assert pol["source"] == "docs/a-policy.md"
    assert by_id["sub/guide"]["title"] == "Hướng dẫn VPN"
    assert by_id["notes"]["title"] == "Ghi chú vận hành"
    travel = by_id["travel"]
    assert travel["title"] == "Chính sách công tác phí"
    assert "## Phạm vi áp dụng\n\n" + BODY in travel["text"]
    assert "- Đặt vé trước năm ngày" in travel["text"]
    assert "Hạng | Mức\nNhân viên | 500.000 đồng" in travel["text"]
    pdf = by_id["incident"]
    assert pdf["title"] == "Báo cáo sự cố tháng 3"
    assert "## 1. Tóm tắt sự cố" in pdf["text"] and "## 2. Nguyên nhân" in pdf["text"]
    assert BODY + " " + BODY in pdf["text"]  # wrapped lines joined back into one paragraph
    html = by_id["mfa"]
    assert html["title"] == "Hướng dẫn cấu hình MFA"
    assert html["text"] == (
        "## Hướng dẫn cấu hình MFA\n\nMọi tài khoản HL SSO bắt buộc bật MFA trong 7 ngày.\n\n## Phương thức\n\n"
        "- Ứng dụng TOTP\n- Khóa FIDO2\n\nPhương thức | Ghi chú\nSMS OTP | Không chấp nhận"
    )
    assert result.metrics["documents"]["by_format"] == {"docx": 1, "html": 1, "md": 2, "pdf": 1, "txt": 1}


def test_reflow_pdf_text_dehyphenates_and_keeps_lists() -> None:
    raw = "2. Dòng thời gian\nCụm cơ sở dữ liệu bị cạn kiệt kết nối khi nhà cung cấp phản hồi chậm trong giờ\ncao điểm, hệ thống tự mở rộng Post-\ngreSQL.\n- Bước một\n- Bước hai"
    text = reflow_pdf_text(raw)
    assert text.split("\n") == [
        "",
        "## 2. Dòng thời gian",
        "",
        "Cụm cơ sở dữ liệu bị cạn kiệt kết nối khi nhà cung cấp phản hồi chậm trong giờ cao điểm, hệ thống tự "
        "mở rộng PostgreSQL.",
        "- Bước một",
        "- Bước hai",
    ]


def test_table_sources_columns_tags_and_first_line_title(tmp_path: Path) -> None:
    write(
        tmp_path / "quick.csv",
        f'ma,tieu_de,noi_dung,phong,the,ghi_chu\nP-1,Đặt phòng họp,"{BODY}",Hành chính,"phòng họp; đặt lịch",x\n'
        f'P-2,,"Quy trình gửi xe\n\n{BODY}",Hành chính,,\n',
    )
    cols = {"id": "ma", "title": "tieu_de", "text": "noi_dung", "department": "phong", "tags": "the"}
    result = run(tmp_path, [{"path": "quick.csv", "columns": cols}])
    p1, p2 = result.documents
    assert p1 == {
        "doc_id": "P-1",
        "title": "Đặt phòng họp",
        "text": BODY,
        "source": "quick.csv:2",
        "metadata": {"department": "Hành chính", "tags": ["phòng họp", "đặt lịch"], "ghi_chu": "x"},
    }
    assert p2["title"] == "Quy trình gửi xe" and p2["source"] == "quick.csv:3"


def test_xlsx_table(tmp_path: Path) -> None:
    import openpyxl

    wb = openpyxl.Workbook()
    wb.active.append(["id", "text", "year"])
    wb.active.append([15, BODY, 2026])
    wb.save(tmp_path / "docs.xlsx")
    result = run(tmp_path, [{"path": "docs.xlsx"}])
    assert result.documents[0]["doc_id"] == "15"
    assert result.documents[0]["metadata"] == {"year": 2026}
    assert result.documents[0]["source"] == "docs.xlsx:2"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("15, 37", ["15", "37"]),
        ("15;37", ["15", "37"]),
        ("[15, 37]", ["15", "37"]),
        ('["A-1", "B-2"]', ["A-1", "B-2"]),
        ([15, "37 ", 15], ["15", "37"]),
        (15, ["15"]),
        (15.0, ["15"]),
        ("", []),
        (None, []),
    ],
)
def test_parse_positives(value: Any, expected: list[str]) -> None:
    assert parse_positives(value) == expected


def test_parse_positives_keeps_known_ids_with_commas() -> None:
    known = {"Luật Phòng, chống ma túy@32"}
    assert parse_positives("Luật Phòng, chống ma túy@32", known) == ["Luật Phòng, chống ma túy@32"]


def test_queries_match_int_ids_and_normalize(tmp_path: Path) -> None:
    jsonl(tmp_path / "docs.jsonl", [{"id": 15, "text": BODY}, {"id": "37", "text": BODY + " Thêm."}])
    write(tmp_path / "q.csv", 'ma,cau_hoi,lien_quan,loai\nQ1,Nghỉ phép bao nhiêu ngày?  ,"15, 37",direct\n')
    jsonl(tmp_path / "q.jsonl", [{"id": 7, "question": "Sức khoẻ ra sao?", "docs": [15]}])
    result = run(
        tmp_path,
        ["docs.jsonl"],
        [
            {"path": "q.csv", "columns": {"id": "ma", "query": "cau_hoi", "positives": "lien_quan"}},
            {"path": "q.jsonl", "columns": {"query": "question", "positives": "docs"}},
        ],
    )
    assert result.queries == [
        {
            "query_id": "Q1",
            "query": "Nghỉ phép bao nhiêu ngày?",
            "positive_doc_ids": ["15", "37"],
            "source": "q.csv:2",
            "metadata": {"loai": "direct"},
            "split": None,
        },
        {
            "query_id": "7",
            "query": "Sức khỏe ra sao?",
            "positive_doc_ids": ["15"],
            "source": "q.jsonl:1",
            "metadata": {},
            "split": None,
        },
    ]
    assert result.metrics["queries"]["positives_per_query_mean"] == 1.5


def test_mojibake_document_is_repaired_and_counted(tmp_path: Path) -> None:
    write(tmp_path / "d/broken.txt", BODY.encode("utf-8").decode("sloppy-windows-1252"))
    result = run(tmp_path, ["d"])
    assert result.documents[0]["text"] == BODY
    assert result.metrics["documents"]["repaired_mojibake"] == 1


# ---------------------------------------------------------------- bad inputs: quarantined


def test_malformed_jsonl_line_is_quarantined_with_file_and_line(tmp_path: Path) -> None:
    lines = [{"id": f"D{i}", "text": f"{BODY} {i}"} for i in range(5)]
    jsonl(tmp_path / "docs.jsonl", [*lines[:2], '{"id": "D9", "text": "unterminated', *lines[2:]])
    result = run(tmp_path, ["docs.jsonl"])
    assert reasons(result) == [("malformed_json", "docs.jsonl:3")]
    assert result.quarantine[0]["record"]["line"].startswith('{"id": "D9"')
    assert len(result.documents) == 5


def test_csv_row_with_too_many_fields_is_quarantined(tmp_path: Path) -> None:
    write(tmp_path / "docs.csv", f"id,text\nA,{BODY}\nB,{BODY},extra\n")
    result = run(tmp_path, ["docs.csv"])
    assert reasons(result) == [("malformed_row", "docs.csv:3")]


def test_mostly_malformed_jsonl_is_a_hard_error(tmp_path: Path) -> None:
    write(tmp_path / "docs.jsonl", "id,text\nD1,hello\nD2,world\n")
    with pytest.raises(IngestError, match=r"docs.jsonl.*really JSONL.*max_bad_fraction"):
        run(tmp_path, ["docs.jsonl"])


def test_empty_and_short_text_are_quarantined(tmp_path: Path) -> None:
    jsonl(
        tmp_path / "docs.jsonl",
        [{"id": "A", "text": "  \u200b "}, {"id": "B", "text": "Ngắn"}, {"id": "C", "text": BODY}],
    )
    write(tmp_path / "d/empty.md", "---\ntitle: Trống\n---\n\n")
    result = run(tmp_path, ["docs.jsonl", "d"])
    assert reasons(result) == [
        ("empty_text", "docs.jsonl:1"),
        ("too_short", "docs.jsonl:2"),
        ("empty_text", "d/empty.md"),
    ]
    assert [d["doc_id"] for d in result.documents] == ["C"]


def test_duplicate_ids_and_texts_keep_the_first(tmp_path: Path) -> None:
    jsonl(
        tmp_path / "docs.jsonl",
        [{"id": "A", "text": BODY}, {"id": "A", "text": BODY + " Khác."}, {"id": "B", "text": BODY + "  "}],
    )
    jsonl(tmp_path / "q.jsonl", [{"id": "q1", "query": "Nghỉ phép?", "positives": ["B"]}])
    result = run(tmp_path, ["docs.jsonl"], ["q.jsonl"])
    assert reasons(result) == [("duplicate_id", "docs.jsonl:2"), ("duplicate_text", "docs.jsonl:3")]
    assert result.quarantine[1]["record"]["duplicate_of"] == "A"
    assert result.queries[0]["positive_doc_ids"] == ["A"]  # a label on the duplicate follows the kept copy
    assert result.metrics["documents"]["duplicates"] == 2


@pytest.mark.parametrize("name", ["broken.docx", "broken.pdf"])
def test_unreadable_file_is_quarantined(tmp_path: Path, name: str) -> None:
    write(tmp_path / "d" / name, b"PK\x03\x04 this is not really an office file or a PDF")
    write(tmp_path / "d/ok.md", BODY)
    result = run(tmp_path, ["d"])
    assert reasons(result) == [("unreadable_file", f"d/{name}")]
    assert ("not a valid" if name.endswith("docx") else "not a readable") in result.quarantine[0]["record"]["error"]
    assert [d["doc_id"] for d in result.documents] == ["ok"]


def test_undecodable_text_file_is_quarantined(tmp_path: Path) -> None:
    write(tmp_path / "d/binary.txt", bytes(range(256)) * 4)
    result = run(tmp_path, ["d"])
    assert reasons(result) == [("decode_error", "d/binary.txt")]


def test_unknown_positives_partial_and_total(tmp_path: Path) -> None:
    jsonl(tmp_path / "docs.jsonl", [{"id": "A", "text": BODY}])
    queries = [
        {"id": "q1", "query": "Một?", "positives": "A, ZZZ"},
        {"id": "q2", "query": "Hai?", "positives": ["NOPE"]},
        {"id": "q3", "query": "Ba?", "positives": []},
        {"id": "q1", "query": "Trùng?", "positives": ["A"]},
        {"id": "q5", "query": "   ", "positives": ["A"]},
    ]
    jsonl(tmp_path / "q.jsonl", queries)
    result = run(tmp_path, ["docs.jsonl"], ["q.jsonl"])
    assert reasons(result) == [
        ("unknown_positive", "q.jsonl:1"),
        ("unknown_positive", "q.jsonl:2"),
        ("no_positives", "q.jsonl:3"),
        ("empty_query", "q.jsonl:5"),
        ("duplicate_query_id", "q.jsonl:4"),
    ]
    assert result.quarantine[0]["record"]["unknown_positive_ids"] == ["ZZZ"]
    assert result.queries == [
        {"query_id": "q1", "query": "Một?", "positive_doc_ids": ["A"], "source": "q.jsonl:1", "metadata": {},
         "split": None}
    ]  # fmt: skip
    m = result.metrics["queries"]
    assert (m["read"], m["kept"], m["quarantined"], m["unknown_positive_ids"]) == (5, 1, 4, 2)


def test_sidecar_row_without_file_is_reported(tmp_path: Path) -> None:
    write(tmp_path / "d/a.md", BODY)
    write(tmp_path / "d/meta.csv", "file,title\na.md,A\ngone.md,Gone\n")
    result = run(tmp_path, [{"path": "d", "metadata": "d/meta.csv"}])
    assert reasons(result) == [("missing_file", "d/meta.csv:3")]


# ---------------------------------------------------------------- bad config: hard errors


def test_missing_column_is_a_hard_error_naming_file_column_and_key(tmp_path: Path) -> None:
    write(tmp_path / "docs.csv", f"ma,noi_dung\nA,{BODY}\n")
    with pytest.raises(IngestError) as err:
        run(tmp_path, [{"path": "docs.csv", "columns": {"id": "ma", "text": "body"}}])
    message = str(err.value)
    assert "docs.csv" in message and "'body'" in message and "noi_dung" in message
    assert "ingest.documents[0].columns.text" in message


def test_missing_required_default_column_in_jsonl(tmp_path: Path) -> None:
    jsonl(tmp_path / "q.jsonl", [{"id": "q", "question": "?", "positives": ["A"]}])
    jsonl(tmp_path / "docs.jsonl", [{"id": "A", "text": BODY}])
    with pytest.raises(IngestError, match=r"q.jsonl: column 'query'.*ingest.queries\[0\].columns.query"):
        run(tmp_path, ["docs.jsonl"], ["q.jsonl"])


def test_nonexistent_source_path_is_a_hard_error(tmp_path: Path) -> None:
    with pytest.raises(IngestError, match=r"ingest.documents\[0\].path.*'nowhere'.*no such file"):
        run(tmp_path, ["nowhere"])


# ---------------------------------------------------------------- the stage script


def run_stage(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(REPO / "stages/ingest.py")], cwd=root, capture_output=True, text=True, check=False
    )


def test_stage_is_deterministic_and_reports_config_errors(tmp_path: Path) -> None:
    write(tmp_path / "src/d/b.md", f"# B\n\n{BODY}")
    write(tmp_path / "src/d/a.txt", BODY + " A.")
    jsonl(
        tmp_path / "src/t.jsonl",
        [{"id": "T", "text": BODY + " T.", "x": {"b": 1, "a": 2}}, "{bad"]
        + [{"id": f"T{i}", "text": f"{BODY} {i}"} for i in range(5)],
    )
    jsonl(tmp_path / "src/q.jsonl", [{"id": "q", "query": "Hỏi?", "positives": ["b", "a"]}])
    params = {"ingest": {"root": "src", "documents": ["d", "t.jsonl"], "queries": ["q.jsonl"]}}
    params["ingest"].update(
        tone_style="old", min_chars=20, max_bad_fraction=0.2, follow_external_links=False
    )  # the stage refuses a missing key
    write(tmp_path / "params.yaml", yaml.safe_dump(params, allow_unicode=True))
    outputs = ["data/interim/documents.jsonl", "data/interim/queries.jsonl", "data/interim/quarantine.jsonl",
               "metrics/ingest.json"]  # fmt: skip
    first = run_stage(tmp_path)
    assert first.returncode == 0, first.stderr
    assert "wrote 8 documents, 1 queries, 1 quarantined" in first.stderr
    snapshot = {o: (tmp_path / o).read_bytes() for o in outputs}
    assert run_stage(tmp_path).returncode == 0
    assert {o: (tmp_path / o).read_bytes() for o in outputs} == snapshot

    params["ingest"]["documents"].append("missing.csv")
    write(tmp_path / "params.yaml", yaml.safe_dump(params, allow_unicode=True))
    failed = run_stage(tmp_path)
    assert failed.returncode == 1
    assert "missing.csv" in failed.stderr and "Traceback" not in failed.stderr


# ---------------------------------------------------------------- ALQAC-shaped params (fabricated data)


def test_alqac_format_needs_only_params(tmp_path: Path) -> None:
    law = "Luật Phòng, chống ma túy"
    jsonl(
        tmp_path / "alqac/corpus.jsonl",
        [
            {"id": f"{law}@1", "text": "Phạm vi điều chỉnh\n\nLuật này quy định về phòng, chống ma túy.",
             "law_id": law, "article_id": "1"},
            {"id": f"{law}@2", "text": "Luật này áp dụng đối với cơ quan, tổ chức, cá nhân Việt Nam.",
             "law_id": law, "article_id": "2"},
        ],
    )  # fmt: skip
    jsonl(
        tmp_path / "alqac/queries_train.jsonl",
        [{"id": "train-1", "query": "Luật điều chỉnh gì, đúng hay sai?", "positive_ids": [f"{law}@1"],
          "answer": "Đúng", "question_type": "Đúng/Sai", "choices": None}],
    )  # fmt: skip
    section = {
        "root": "alqac",
        "documents": [{"path": "corpus.jsonl"}],
        "queries": [
            {"path": "queries_train.jsonl", "columns": {"id": "id", "query": "query", "positives": "positive_ids"}}
        ],
    }
    result = ingest(load_config(section, repo=tmp_path))
    assert result.quarantine == []
    first, second = result.documents
    assert first["title"] == "Phạm vi điều chỉnh"
    assert first["metadata"] == {"law_id": law, "article_id": "1"}
    assert first["source"] == "alqac/corpus.jsonl:1"
    assert second["title"] == ""  # no blank line after the first line: no title (never the id)
    assert result.queries[0]["positive_doc_ids"] == [f"{law}@1"]
    assert result.queries[0]["metadata"] == {"answer": "Đúng", "question_type": "Đúng/Sai"}


def test_title_format_builds_titles_from_metadata(tmp_path: Path) -> None:
    jsonl(
        tmp_path / "c.jsonl",
        [{"id": "L@1", "text": "Phạm vi điều chỉnh\n\nLuật này quy định về cư trú của công dân.", "law_id": "Luật Cư trú",
          "article_id": "1"}],
    )  # fmt: skip
    section = {"documents": [{"path": "c.jsonl", "title_format": "{law_id}, Điều {article_id}: {title}"}]}
    (doc,) = ingest(load_config(section, repo=tmp_path)).documents
    assert doc["title"] == "Luật Cư trú, Điều 1: Phạm vi điều chỉnh"
    jsonl(tmp_path / "c.jsonl", [{"id": "L@2", "text": "Luật này áp dụng đối với công dân Việt Nam.",
                                  "law_id": "Luật Cư trú", "article_id": "2"}])  # fmt: skip
    (doc,) = ingest(load_config(section, repo=tmp_path)).documents
    assert doc["title"] == "Luật Cư trú, Điều 2"  # no first-line title: neither the id nor a dangling ":"
    only_id = {"documents": [{"path": "c.jsonl", "title_format": "{id}"}]}
    assert ingest(load_config(only_id, repo=tmp_path)).documents[0]["title"] == ""
    bad = {"documents": [{"path": "c.jsonl", "title_format": "{law}: {title}"}]}
    with pytest.raises(IngestError, match="law"):
        ingest(load_config(bad, repo=tmp_path))


# ---------------------------------------------------------------- fixed splits and ids across query files


def docs_and_questions(tmp_path: Path) -> None:
    jsonl(tmp_path / "docs.jsonl", [{"id": "A", "text": BODY}, {"id": "B", "text": BODY + " Khác."}])


def test_fixed_split_from_source_key(tmp_path: Path) -> None:
    docs_and_questions(tmp_path)
    jsonl(tmp_path / "train.jsonl", [{"id": "t1", "query": "Nghỉ phép mấy ngày?", "positives": ["A"]}])
    jsonl(tmp_path / "test.jsonl", [{"id": "x1", "query": "Đăng ký ở đâu?", "positives": ["B"]}])
    jsonl(tmp_path / "more.jsonl", [{"id": "m1", "query": "Hỏi thêm?", "positives": ["A"]}])
    result = run(
        tmp_path,
        ["docs.jsonl"],
        [{"path": "train.jsonl", "split": "Training"}, {"path": "test.jsonl", "split": " TEST "}, "more.jsonl"],
    )
    assert [(q["query_id"], q["split"]) for q in result.queries] == [("t1", "train"), ("x1", "test"), ("m1", None)]
    assert result.metrics["queries"]["by_split"] == {"train": 1, "dev": 0, "test": 1, "unassigned": 1}


def test_fixed_split_from_mapped_column_with_fallback_to_source(tmp_path: Path) -> None:
    docs_and_questions(tmp_path)
    write(
        tmp_path / "q.csv",
        "ma,cau_hoi,lien_quan,tap\nq1,Một?,A,Train\nq2,Hai?,B,TEST\nq3,Ba?,A,validation\nq4,Bốn?,B,\n",
    )
    write(tmp_path / "r.csv", "ma,cau_hoi,lien_quan,tap\nr1,Năm?,A,\nr2,Sáu?,B,dev\n")
    cols = {"id": "ma", "query": "cau_hoi", "positives": "lien_quan", "split": "tap"}
    result = run(
        tmp_path,
        ["docs.jsonl"],
        [{"path": "q.csv", "columns": cols}, {"path": "r.csv", "columns": cols, "split": "test"}],
    )
    got = {q["query_id"]: q["split"] for q in result.queries}
    assert got == {"q1": "train", "q2": "test", "q3": "dev", "q4": None, "r1": "test", "r2": "dev"}
    assert all("tap" not in q["metadata"] and "split" not in q["metadata"] for q in result.queries)


def test_unmapped_split_column_is_not_used(tmp_path: Path) -> None:
    docs_and_questions(tmp_path)
    jsonl(tmp_path / "q.jsonl", [{"id": "q1", "query": "Một?", "positives": ["A"], "split": "test"}])
    result = run(tmp_path, ["docs.jsonl"], ["q.jsonl"])
    assert result.queries[0]["split"] is None
    assert result.queries[0]["metadata"] == {"split": "test"}
    assert any("columns.split" in w for w in result.warnings)


def test_bad_split_value_is_a_hard_error_with_file_line_and_allowed_values(tmp_path: Path) -> None:
    docs_and_questions(tmp_path)
    write(tmp_path / "q.csv", "id,query,positives,split\nq1,Một?,A,train\nq2,Hai?,B,public_test\n")
    with pytest.raises(IngestError) as err:
        run(tmp_path, ["docs.jsonl"], [{"path": "q.csv", "columns": {"split": "split"}}])
    message = str(err.value)
    assert "q.csv:3" in message and "'public_test'" in message
    assert "train, training, dev, validation" in message and "testing" in message
    with pytest.raises(IngestError, match=r"ingest.queries\[0\].split.*'holdout'.*allowed"):
        run(tmp_path, ["docs.jsonl"], [{"path": "q.csv", "split": "holdout"}])


def test_split_on_a_document_source_is_a_hard_error(tmp_path: Path) -> None:
    docs_and_questions(tmp_path)
    with pytest.raises(IngestError, match=r"ingest.documents\[0\].*split.*ingest.queries"):
        run(tmp_path, [{"path": "docs.jsonl", "split": "test"}])
    with pytest.raises(IngestError, match=r"ingest.documents\[0\].*split"):
        run(tmp_path, [{"path": "docs.jsonl", "columns": {"split": "tap"}}])


def test_colliding_ids_across_files_are_all_kept(tmp_path: Path) -> None:
    docs_and_questions(tmp_path)
    jsonl(tmp_path / "train.jsonl", [{"id": i, "query": f"Câu huấn luyện {i}?", "positives": ["A"]} for i in (1, 2)])
    jsonl(
        tmp_path / "test.jsonl",
        [{"id": i, "query": f"Câu kiểm tra {i}?", "positives": ["B"]} for i in (1, 2, 3)]
        + [{"id": 3, "query": "Trùng trong cùng tệp?", "positives": ["B"]}],
    )
    result = run(
        tmp_path, ["docs.jsonl"], [{"path": "train.jsonl", "split": "train"}, {"path": "test.jsonl", "split": "test"}]
    )
    assert [(q["query_id"], q["split"]) for q in result.queries] == [
        ("1", "train"), ("2", "train"), ("test/1", "test"), ("test/2", "test"), ("3", "test"),
    ]  # fmt: skip
    # a repeat inside one file is still a duplicate
    assert reasons(result) == [("duplicate_query_id", "test.jsonl:4")]
    assert result.quarantine[0]["record"]["duplicate_of"] == "test.jsonl:3"
    assert result.metrics["queries"]["renamed_duplicate_ids"] == 2
    (warning,) = [w for w in result.warnings if "query id" in w]
    assert warning.startswith("2 query id(s)") and "'test/1'" in warning


def test_qualified_id_that_also_collides_is_quarantined(tmp_path: Path) -> None:
    docs_and_questions(tmp_path)
    jsonl(tmp_path / "a.jsonl", [{"id": "1", "query": "Một?", "positives": ["A"]},
                                 {"id": "b/1", "query": "Hai?", "positives": ["A"]}])  # fmt: skip
    jsonl(tmp_path / "b.jsonl", [{"id": "1", "query": "Ba?", "positives": ["B"]}])
    result = run(tmp_path, ["docs.jsonl"], ["a.jsonl", "b.jsonl"])
    assert [q["query_id"] for q in result.queries] == ["1", "b/1"]
    assert reasons(result) == [("duplicate_query_id", "b.jsonl:1")]
    assert result.metrics["queries"]["renamed_duplicate_ids"] == 0


# ---------------------------------------------------------------- a title that is only the id


def word_chunker() -> Any:
    from ragtune.chunking import Chunker

    def count(texts: list[str]) -> list[int]:
        return [len(t.split()) for t in texts]

    def split(text: str, n: int) -> list[tuple[int, int]]:
        return [(0, len(text))]

    return Chunker(count, split, max_tokens=64, overlap_tokens=8, prepend_title=True)


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_id_and_text_table_gives_no_id_title_and_chunks_without_the_id(tmp_path: Path, fmt: str) -> None:
    from ragtune.chunking import chunk_corpus

    # no title column / an empty one / a title column that repeats the id
    rows = [{"id": 1, "text": BODY}, {"id": "d_topic_3100", "text": BODY + " Hai."},
            {"id": "p-7", "title": "P-7", "text": BODY + " Ba."}]  # fmt: skip
    if fmt == "csv":
        lines = "".join(f'{r["id"]},{r.get("title", "")},"{r["text"]}"\n' for r in rows)
        write(tmp_path / "docs.csv", "id,title,text\n" + lines)
    else:
        jsonl(tmp_path / "docs.jsonl", rows)
    result = run(tmp_path, [f"docs.{fmt}"])
    assert [(d["doc_id"], d["title"]) for d in result.documents] == [("1", ""), ("d_topic_3100", ""), ("p-7", "")]
    chunks = chunk_corpus(result.documents, word_chunker())
    assert [c["doc_id"] for c in chunks] == ["1", "d_topic_3100", "p-7"]
    for c in chunks:
        assert c["text"].startswith("Nhân viên được nghỉ phép") and c["title"] == ""


def test_folder_document_without_a_title_gets_none_not_its_file_name(tmp_path: Path) -> None:
    write(tmp_path / "d/pol-001.md", BODY)  # top level: the id is the file stem
    write(tmp_path / "d/sub/guide.txt", BODY + " Hai.")
    write(tmp_path / "d/meta.csv", "file,id\nsub/guide.txt,G-1\n")
    result = run(tmp_path, [{"path": "d", "metadata": "d/meta.csv"}])
    assert [(d["doc_id"], d["title"]) for d in result.documents] == [("pol-001", ""), ("G-1", "")]


def test_real_titles_are_kept_and_prepended(tmp_path: Path) -> None:
    from ragtune.chunking import chunk_corpus

    write(tmp_path / "d/pol-001.md", f"# Chính sách nghỉ phép\n\n{BODY}")
    jsonl(tmp_path / "t.jsonl", [{"id": "7", "text": f"Quy trình gửi xe\n\n{BODY} Hai."}])
    result = run(tmp_path, ["d", "t.jsonl"])
    assert [d["title"] for d in result.documents] == ["Chính sách nghỉ phép", "Quy trình gửi xe"]
    chunks = chunk_corpus(result.documents, word_chunker())
    assert [c["text"].split("\n")[0] for c in chunks] == ["Chính sách nghỉ phép", "Quy trình gửi xe"]
