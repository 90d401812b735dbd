"""Seeded generators of messy corpora for the fuzz suite (tests/test_fuzz.py).

A corpus is a folder of documents and question tables drawn from a list of *classes* of input: each class is one
way a real organisation's folder goes wrong (a wrong encoding, a corrupt Office file, a CSV with an unclosed quote,
a merged XLSX cell, ids of odd shapes, questions naming documents that do not exist …) or right (clean Vietnamese
text in every format ingest reads). A seed picks a handful of classes, so each seed is a different mix, and the
same seed always builds the same bytes: a failure names its seed and replays exactly.
"""

from __future__ import annotations

import json
import os
import random
import unicodedata
from collections.abc import Callable
from pathlib import Path
from typing import Any

SENTENCES = [
    "Nhân viên chính thức được nghỉ phép năm mười hai ngày làm việc.",
    "Đơn xin nghỉ phép phải gửi cho trưởng phòng trước ba ngày.",
    "Chi phí công tác được thanh toán trong vòng mười ngày kể từ khi nộp chứng từ.",
    "Mật khẩu hệ thống phải có ít nhất mười hai ký tự và được đổi sau chín mươi ngày.",
    "Thiết bị mua sắm trên năm mươi triệu đồng cần phê duyệt của giám đốc tài chính.",
    "Báo cáo tháng được gửi về phòng kế hoạch trước ngày năm của tháng sau.",
    "Khách hàng có quyền yêu cầu xóa dữ liệu cá nhân theo quy định hiện hành.",
    "Hợp đồng lao động thử việc không quá sáu mươi ngày đối với vị trí chuyên môn.",
    "Phòng nhân sự tổ chức đào tạo an toàn lao động hai lần mỗi năm.",
    "Kết nối VPN bắt buộc khi truy cập hệ thống nội bộ từ bên ngoài văn phòng.",
]
TITLES = ["Quy định nghỉ phép", "Công tác phí", "An toàn thông tin", "Mua sắm thiết bị", "Báo cáo định kỳ",
          "Bảo vệ dữ liệu", "Hợp đồng lao động", "Đào tạo", "Truy cập từ xa", "Quy trình phê duyệt"]  # fmt: skip
# ids of the shapes users really have: numbers, codes with punctuation, unicode, spaces, leading zeros
ID_SHAPES: list[Callable[[random.Random, int], Any]] = [
    lambda r, i: f"D{i}",
    lambda r, i: i + 1,
    lambda r, i: f"{i:05d}",
    lambda r, i: f"QĐ-{i}/2024",
    lambda r, i: f"tài liệu {i}",
    lambda r, i: f"doc.{i}.v2",
    lambda r, i: float(i) + 0.5,
]


def body(rng: random.Random, n: int | None = None) -> str:
    return " ".join(rng.choice(SENTENCES) for _ in range(n or rng.randint(2, 6)))


def _doc_id(rng: random.Random, shape: int, i: int) -> Any:
    return ID_SHAPES[shape](rng, i)


# ------------------------------------------------------------------------------------------- document files
def _md(rng: random.Random, i: int) -> bytes:
    return f"# {rng.choice(TITLES)} {i}\n\n{body(rng)}\n".encode()


def _txt_cp1258(rng: random.Random, i: int) -> bytes:
    return body(rng).encode("cp1258", errors="replace")


def _txt_utf16(rng: random.Random, i: int) -> bytes:
    return body(rng).encode("utf-16")


def _txt_mojibake(rng: random.Random, i: int) -> bytes:
    return body(rng).encode("utf-8").decode("latin-1").encode("utf-8")


def _txt_nfd(rng: random.Random, i: int) -> bytes:
    return unicodedata.normalize("NFD", body(rng)).encode()


def _binary(rng: random.Random, i: int) -> bytes:
    return bytes(rng.randrange(256) for _ in range(rng.randint(1, 400)))


def _empty(rng: random.Random, i: int) -> bytes:
    return rng.choice([b"", b"   \n\t\n", b"ok"])


def _front_matter(rng: random.Random, i: int) -> bytes:
    good = f"---\ntitle: {rng.choice(TITLES)}\ndepartment: HR\ntags: [a, b]\n---\n{body(rng)}\n"
    bad = f"---\ntitle: [unclosed\n---\n{body(rng)}\n"
    return rng.choice([good, bad]).encode()


def _docx(rng: random.Random, i: int) -> bytes:
    import io

    from docx import Document

    doc = Document()
    doc.add_heading(rng.choice(TITLES), level=1)
    for _ in range(rng.randint(1, 3)):
        doc.add_paragraph(body(rng))
    buf = io.BytesIO()
    doc.save(buf)
    return buf.getvalue()


def _pdf(rng: random.Random, i: int) -> bytes:
    from fpdf import FPDF

    pdf = FPDF()
    pdf.add_page()
    pdf.set_font("helvetica", size=11)
    text = unicodedata.normalize("NFKD", body(rng)).encode("ascii", "ignore").decode()  # core fonts: latin-1 only
    pdf.multi_cell(0, 6, text)
    return bytes(pdf.output())


def _html(rng: random.Random, i: int) -> bytes:
    good = f"<html><head><title>{rng.choice(TITLES)}</title></head><body><p>{body(rng)}</p></body></html>"
    broken = f"<html><body><p>{body(rng)}<div><span>{body(rng, 1)}"
    return rng.choice([good, broken]).encode()


# name suffix → generator; several classes share a suffix (that is the point: the name does not tell the content)
FOLDER_FILES: list[tuple[str, Callable[[random.Random, int], bytes]]] = [
    (".md", _md),
    (".md", _front_matter),
    (".txt", _txt_cp1258),
    (".txt", _txt_utf16),
    (".txt", _txt_mojibake),
    (".txt", _txt_nfd),
    (".txt", _binary),
    (".md", _empty),
    (".docx", _docx),
    (".docx", _binary),
    (".pdf", _pdf),
    (".pdf", _binary),
    (".html", _html),
    (".doc", _binary),
    (".rtf", lambda r, i: ("{\\rtf1\\ansi " + body(r) + "}").encode()),
    (".json", lambda r, i: json.dumps({"text": body(r)}).encode()),
    ("", _md),  # no extension
]


def write_folder(rng: random.Random, folder: Path, outside: Path) -> None:
    """A document folder: files of random classes, plus the odd non-files a real share holds."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(rng.randint(3, 9)):
        suffix, make = rng.choice(FOLDER_FILES)
        (folder / f"tai_lieu_{i}{suffix}").write_bytes(make(rng, i))
    if rng.random() < 0.3:
        (folder / ".hidden.md").write_bytes(_md(rng, 99))
    if rng.random() < 0.3:
        (folder / "sub").mkdir(exist_ok=True)
        (folder / "sub" / "nested.md").write_bytes(_md(rng, 98))
    if rng.random() < 0.3:
        os.symlink(folder / "does_not_exist.md", folder / "dangling.md")
    if rng.random() < 0.3:
        outside.mkdir(parents=True, exist_ok=True)
        (outside / "secret.txt").write_text("mật khẩu quản trị: hunter2 " + body(rng), encoding="utf-8")
        os.symlink(outside / "secret.txt", folder / "link_out.txt")
    if rng.random() < 0.2 and hasattr(os, "mkfifo"):
        os.mkfifo(folder / "pipe.txt")


# ------------------------------------------------------------------------------------------------ tables
def _cell_text(rng: random.Random) -> Any:
    """Mostly text; sometimes what a JSONL export really holds in a text field."""
    roll = rng.random()
    if roll < 0.75:
        return body(rng)
    if roll < 0.85:
        return [body(rng, 1), body(rng, 1)]
    return rng.choice([{"vi": body(rng, 1)}, 12345, None, "", 3.5, True])


def write_doc_table(rng: random.Random, path: Path, ids: list[Any]) -> dict[str, str]:
    """A document table (CSV, JSONL or XLSX) with the given ids; returns its ``columns`` map."""
    rows = [{"ma": doc_id, "tieu_de": rng.choice(TITLES), "noi_dung": _cell_text(rng)} for doc_id in ids]
    if rng.random() < 0.2 and rows:
        rows.append(dict(rows[0]))  # a duplicate id
    fmt = path.suffix
    if fmt == ".jsonl":
        lines = [json.dumps(r, ensure_ascii=False) for r in rows]
        if rng.random() < 0.3:
            lines.insert(rng.randint(0, len(lines)), '{"ma": "broken", "noi_dung": ')  # malformed line
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    elif fmt == ".csv":

        def cell(v: Any) -> str:
            s = "" if v is None else str(v)
            return '"' + s.replace('"', '""') + '"'

        header = "ma,tieu_de,noi_dung" if rng.random() > 0.15 else "ma,noi_dung,noi_dung"  # duplicated column
        lines = [header] + [",".join(cell(r[k]) for k in ("ma", "tieu_de", "noi_dung")) for r in rows]
        if rng.random() < 0.2 and len(lines) > 2:
            lines[1] = lines[1][:-1]  # an unclosed quote: the rows after it end up inside one field
        if rng.random() < 0.1:
            lines = lines[:1]  # header only
        path.write_text("\n".join(lines) + "\n", encoding=rng.choice(["utf-8", "utf-8-sig"]))
    else:
        from openpyxl import Workbook

        wb = Workbook()
        ws = wb.active
        ws.append(["ma", "tieu_de", "noi_dung"])
        if rng.random() > 0.1:  # else: header only
            for r in rows:
                ws.append([r["ma"] if not isinstance(r["ma"], float) else str(r["ma"]), r["tieu_de"],
                           r["noi_dung"] if isinstance(r["noi_dung"], str | int | float) else str(r["noi_dung"])])  # fmt: skip
        if rng.random() < 0.3 and ws.max_row >= 4:
            ws.merge_cells(start_row=2, start_column=2, end_row=3, end_column=2)  # one title for two rows
        wb.save(path)
    return {"id": "ma", "title": "tieu_de", "text": "noi_dung"}


def write_queries(rng: random.Random, path: Path, ids: list[Any]) -> dict[str, str]:
    """A question table whose positives name the given ids, some unknown, in the shapes users write them."""
    rows = []
    bad_split = rng.random() < 0.1  # one unknown split name is an error for the whole source: keep it rare
    for i in range(rng.randint(4, 14)):
        picks = rng.sample(ids, k=min(len(ids), rng.randint(1, 2))) if ids else []
        if rng.random() < 0.15:
            picks = ["không_tồn_tại"]
        style = rng.random()
        if style < 0.5:
            positives: Any = [str(p) for p in picks]
        elif style < 0.7:
            positives = ", ".join(str(p) for p in picks)
        elif style < 0.8:
            positives = " | ".join(str(p) for p in picks)
        elif style < 0.9:
            positives = " ".join(str(p) for p in picks)
        else:
            positives = picks[0] if picks else None
        query = rng.choice([body(rng, 1).replace(".", "?"), "", "   ", ["hai", "câu"], 42])
        if rng.random() < 0.7:
            query = body(rng, 1).replace(".", "?")
        split = rng.choice([None, None, "train", "test", "dev", "Test", "validation", " TRAIN "])
        if bad_split and i == 0:
            split = "xyz"
        row = {"id": f"Q{i}" if rng.random() > 0.1 else "Q0", "cau_hoi": query, "tai_lieu": positives}
        if split is not None:
            row["tap"] = split
        rows.append(row)
    lines = [json.dumps(r, ensure_ascii=False) for r in rows]
    if rng.random() < 0.2:
        lines.append("{not json")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return {"id": "id", "query": "cau_hoi", "positives": "tai_lieu", "split": "tap"}


def build_corpus(seed: int, root: Path) -> dict[str, Any]:
    """Write a random corpus under ``root`` (and an ``outside`` folder beside it for links out of the corpus);
    return the ``ingest:`` params section that reads it."""
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    documents: list[dict[str, Any]] = []
    all_ids: list[Any] = []
    for f in range(rng.randint(1, 2)):
        write_folder(rng, root / f"thu_muc_{f}", root.parent / "outside")
        documents.append({"path": f"thu_muc_{f}"})
        all_ids += [f"tai_lieu_{i}" for i in range(9)]
    for t in range(rng.randint(0, 2)):
        shape = rng.randrange(len(ID_SHAPES))
        ids = [_doc_id(rng, shape, i + 100 * t) for i in range(rng.randint(0, 8))]
        path = root / f"bang_{t}{rng.choice(['.csv', '.jsonl', '.xlsx'])}"
        columns = write_doc_table(rng, path, ids)
        documents.append({"path": path.name, "columns": columns})
        all_ids += ids
    queries = []
    if rng.random() < 0.85:
        qpath = root / "cau_hoi.jsonl"
        queries.append({"path": qpath.name, "columns": write_queries(rng, qpath, all_ids)})
    return {"root": str(root), "documents": documents, "queries": queries}
