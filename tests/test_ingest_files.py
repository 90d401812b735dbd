"""File-level ingest: every entry of a document folder is read, skipped or quarantined with a reason, and counted.

Each test builds the bad input for real in a folder (unreadable files, FIFOs, links out of the corpus, old .doc
files, corrupt packages) and runs the stage's ``run_ingest`` (or ``ingest``), then checks what it wrote.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import zipfile
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import shipped_params
from test_ingest import BODY, write

from ragtune.ingest import FOLDER_FORMATS, READERS, IngestError, ingest, load_config, run_ingest
from ragtune.paths import Paths

NOBODY = 65534


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def stage(repo: Path, documents: list[Any], **extra: Any) -> tuple[list[dict], list[dict], dict[str, Any]]:
    """Run the ingest stage on ``repo/corpus``; return the documents, quarantine and metrics it wrote."""
    paths = Paths(repo)
    run_ingest(shipped_params("ingest", root="corpus", documents=documents, queries=[], **extra), paths)
    metrics = json.loads(paths.metrics("ingest").read_text(encoding="utf-8"))
    return read_jsonl(paths.documents), read_jsonl(paths.ingest_quarantine), metrics


def file_records(quarantine: list[dict]) -> dict[str, str]:
    return {q["source"]: q["reason"] for q in quarantine if q["kind"] == "file"}


def assert_balanced(quarantine: list[dict], metrics: dict[str, Any]) -> None:
    """files: seen = read + quarantined + skipped, with quarantined counted from the quarantine file itself."""
    files = metrics["files"]
    from_records = Counter(q["reason"] for q in quarantine if q["kind"] == "file")
    assert files["quarantined"] == sum(from_records.values())
    assert files["quarantine_reasons"] == dict(from_records)
    assert files["seen"] == files["read"] + files["quarantined"] + files["skipped"]
    assert files["unaccounted"] == 0


# ---------------------------------------------------------------- files and folders that cannot be read


def _as_nobody(work: Callable[[], None]) -> None:
    """Run ``work`` in a child process as user nobody: root reads a chmod 000 file anyway, nobody cannot.
    The child reports an exception's type and message through a pipe."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.close(read_end)
        message = b""
        try:
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            work()
        except BaseException as exc:  # handed to the parent as text
            message = f"{type(exc).__name__}: {exc}".encode()
        finally:
            os.write(write_end, message)
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        message = pipe.read().decode()
    os.waitpid(pid, 0)
    if message:
        raise RuntimeError(message)


@pytest.fixture
def open_repo() -> Iterator[Path]:
    """A repo folder every user may enter and write (pytest's tmp_path is root-only), removed afterwards."""
    repo = Path(tempfile.mkdtemp(prefix="ragtune-files-"))
    yield repo
    for path in repo.rglob("*"):
        if path.is_dir() and not path.is_symlink():
            path.chmod(0o755)
    shutil.rmtree(repo)


def stage_unprivileged(repo: Path, locked: list[str], **section: Any) -> tuple[list[dict], list[dict], dict]:
    """Run the ingest stage on ``repo/corpus`` with the paths in ``locked`` (relative to it) at chmod 000: as
    nobody when the tests run as root, in-process otherwise. Returns documents, quarantine and metrics."""
    for path in [repo, *repo.rglob("*")]:
        path.chmod(0o777 if path.is_dir() else 0o644)
    for name in locked:
        (repo / "corpus" / name).chmod(0o000)
    paths = Paths(repo)
    params = shipped_params("ingest", root="corpus", **{"queries": [], **section})

    def work() -> None:
        run_ingest(params, paths)

    if os.geteuid() == 0:
        _as_nobody(work)
    else:
        try:
            work()
        except Exception as exc:  # the same shape as the child's report
            raise RuntimeError(f"{type(exc).__name__}: {exc}") from exc
    metrics = json.loads(paths.metrics("ingest").read_text(encoding="utf-8"))
    return read_jsonl(paths.documents), read_jsonl(paths.ingest_quarantine), metrics


def test_unreadable_file_and_folder_are_quarantined_and_the_run_goes_on(open_repo: Path) -> None:
    docs = open_repo / "corpus/docs"
    write(docs / "a-ok.md", f"# Nghỉ phép\n\n{BODY}")
    write(docs / "locked.txt", BODY + " Khóa.")
    write(docs / "private/hidden-from-us.md", BODY + " Riêng.")
    write(docs / "z-ok.txt", BODY + " Cuối.")
    documents, quarantine, metrics = stage_unprivileged(
        open_repo, ["docs/locked.txt", "docs/private"], documents=["docs"]
    )
    assert [d["source"] for d in documents] == ["corpus/docs/a-ok.md", "corpus/docs/z-ok.txt"]
    assert file_records(quarantine) == {
        "corpus/docs/locked.txt": "permission_denied",
        "corpus/docs/private": "unreadable_dir",
    }
    errors = {q["source"]: q["record"]["error"] for q in quarantine}
    assert "give the user running ingest read permission" in errors["corpus/docs/locked.txt"]
    assert "chmod a+rx" in errors["corpus/docs/private"]
    assert metrics["files"] == {
        "seen": 4, "read": 2, "quarantined": 2, "skipped": 0, "unaccounted": 0,
        "quarantine_reasons": {"permission_denied": 1, "unreadable_dir": 1}, "skip_reasons": {},
    }  # fmt: skip
    assert_balanced(quarantine, metrics)


def test_unreadable_table_and_query_files_are_quarantined(open_repo: Path) -> None:
    """A table that cannot be read is set aside whole (kind ``source``) and the run goes on; when that leaves no
    question at all, the run stops and says why."""
    write(open_repo / "corpus/docs/ok.md", BODY)
    write(open_repo / "corpus/table.csv", "id,text\nT-1,Một tài liệu trong bảng đủ dài để được giữ lại.\n")
    write(open_repo / "corpus/questions.jsonl", '{"id": "q1", "query": "Nghỉ phép?", "positives": ["ok"]}\n')
    documents, quarantine, _ = stage_unprivileged(
        open_repo, ["table.csv"], documents=["docs", "table.csv"], queries=["questions.jsonl"]
    )
    assert [d["doc_id"] for d in documents] == ["ok"]
    assert [(q["kind"], q["source"], q["reason"]) for q in quarantine] == [
        ("source", "corpus/table.csv", "permission_denied"),
    ]
    assert quarantine[0]["record"]["source_kind"] == "document"
    with pytest.raises(RuntimeError, match=r"IngestError: ingest kept no query.*permission_denied"):
        stage_unprivileged(open_repo, ["questions.jsonl"], documents=["docs"], queries=["questions.jsonl"])


def test_an_unreadable_sidecar_is_an_error_that_names_it(open_repo: Path) -> None:
    write(open_repo / "corpus/docs/ok.md", BODY)
    write(open_repo / "corpus/docs/meta.csv", "file,department\nok.md,Nhân sự\n")
    with pytest.raises(
        RuntimeError, match=r"IngestError: .*meta\.csv: the metadata sidecar of `ingest\.documents\[0\]`"
    ):
        stage_unprivileged(open_repo, ["docs/meta.csv"], documents=[{"path": "docs", "metadata": "docs/meta.csv"}])


def test_a_file_that_vanishes_between_listing_and_reading_is_quarantined(tmp_path: Path) -> None:
    """A real OSError on read, as root too: the file is listed, then deleted before its turn (a sync client, an
    editor's save). The progress hook that the stage passes runs between the two."""
    docs = tmp_path / "corpus/docs"
    write(docs / "a.md", BODY)
    write(docs / "b-gone.md", BODY + " Biến mất.")

    def track(items: Iterable[Any], _description: str) -> Iterator[Any]:
        items = list(items)
        (docs / "b-gone.md").unlink()
        yield from items

    config = load_config({"root": "corpus", "documents": ["docs"], "queries": []}, repo=tmp_path)
    result = ingest(config, track=track)
    assert [d["doc_id"] for d in result.documents] == ["a"]
    assert file_records(result.quarantine) == {"corpus/docs/b-gone.md": "read_error"}
    assert "vanished" in result.quarantine[0]["record"]["error"]
    assert_balanced(result.quarantine, result.metrics)


# ---------------------------------------------------------------- every entry counted, by reason


def test_every_entry_of_a_folder_is_read_skipped_or_quarantined_by_reason(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    docs = corpus / "docs"
    write(docs / "ok.md", f"# Nghỉ phép\n\n{BODY}")
    write(docs / "old.doc", b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\0" * 100)
    write(docs / "data.json", '{"text": "không phải tài liệu"}')
    write(docs / "table.csv", "id,text\n1,một\n")
    write(docs / "README", BODY)
    write(docs / ".DS_Store", b"\0\1")
    write(docs / ".git/config", "[core]")
    write(docs / ".git/objects/ab", b"\0")
    os.mkfifo(docs / "pipe.txt")  # a read would block forever: the walk must not open it
    (docs / "dangling.md").symlink_to("nowhere.md")
    (docs / "loop-a.md").symlink_to("loop-b.md")
    (docs / "loop-b.md").symlink_to("loop-a.md")
    (docs / "sub").mkdir()
    (docs / "sub/up").symlink_to("..")  # a folder link to its own ancestor: walked once, not forever
    write(docs / "sub/nested.txt", BODY + " Lồng nhau.")
    write(docs / "meta.csv", "file,department\nok.md,Nhân sự\nold.doc,Nhân sự\n")
    write(docs / "inner/x.md", BODY + " Nguồn riêng.")  # listed as a source of its own below
    documents, quarantine, metrics = stage(
        tmp_path, [{"path": "docs", "metadata": "docs/meta.csv"}, "docs/inner"]
    )  # fmt: skip

    assert [d["source"] for d in documents] == [
        "corpus/docs/ok.md",
        "corpus/docs/sub/nested.txt",
        "corpus/docs/inner/x.md",
    ]
    assert file_records(quarantine) == {
        "corpus/docs/.DS_Store": "hidden",
        "corpus/docs/.git": "hidden",  # one entry: a hidden folder is not walked into
        "corpus/docs/README": "no_extension",
        "corpus/docs/dangling.md": "dangling_symlink",
        "corpus/docs/data.json": "unsupported_format:.json",
        "corpus/docs/loop-a.md": "symlink_loop",
        "corpus/docs/loop-b.md": "symlink_loop",
        "corpus/docs/old.doc": "unsupported_format:.doc",
        "corpus/docs/pipe.txt": "not_a_regular_file",
        "corpus/docs/sub/up": "symlink_loop",
        "corpus/docs/table.csv": "unsupported_format:.csv",
    }
    assert all(q["kind"] == "file" for q in quarantine)  # the .doc's sidecar row is not reported as missing_file
    errors = {q["source"]: q["record"]["error"] for q in quarantine}
    assert "save as .docx" in errors["corpus/docs/old.doc"]
    assert "list it under `ingest.documents`" in errors["corpus/docs/table.csv"]
    assert "FIFO" in errors["corpus/docs/pipe.txt"]
    assert metrics["files"]["skip_reasons"] == {"other_source": 1, "sidecar": 1}  # docs/inner, docs/meta.csv
    assert metrics["files"]["seen"] == 3 + 11 + 2
    assert metrics["quarantine_reasons"]["hidden"] == 2
    assert_balanced(quarantine, metrics)


# ---------------------------------------------------------------- links out of ingest.root


def _linked_corpus(tmp_path: Path) -> None:
    write(tmp_path / "secret.txt", "root:x:0:0:root:/root:/bin/bash — không phải tài liệu của công ty.")
    write(tmp_path / "elsewhere/far.md", BODY + " Ở nơi khác.")
    docs = tmp_path / "corpus/docs"
    write(docs / "ok.md", BODY)
    write(tmp_path / "corpus/shared/common.md", BODY + " Dùng chung.")
    (docs / "passwd.txt").symlink_to(tmp_path / "secret.txt")
    (docs / "far").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    (docs / "common.md").symlink_to(Path("../shared/common.md"))  # inside ingest.root: followed


def test_links_out_of_the_root_are_refused(tmp_path: Path) -> None:
    _linked_corpus(tmp_path)
    documents, quarantine, metrics = stage(tmp_path, ["docs"])
    assert [d["doc_id"] for d in documents] == ["common", "ok"]
    assert file_records(quarantine) == {
        "corpus/docs/far": "outside_root_link",
        "corpus/docs/passwd.txt": "outside_root_link",
    }
    assert not any("root:x:0:0" in d["text"] for d in documents)
    error = next(q["record"]["error"] for q in quarantine if q["source"] == "corpus/docs/passwd.txt")
    assert "ingest.follow_external_links: true" in error and str(tmp_path / "secret.txt") in error
    assert_balanced(quarantine, metrics)


def test_follow_external_links_reads_them(tmp_path: Path) -> None:
    _linked_corpus(tmp_path)
    documents, quarantine, metrics = stage(tmp_path, ["docs"], follow_external_links=True)
    assert [d["doc_id"] for d in documents] == ["common", "far/far", "ok", "passwd"]
    assert quarantine == []
    assert_balanced(quarantine, metrics)


def test_follow_external_links_must_be_a_boolean(tmp_path: Path) -> None:
    write(tmp_path / "corpus/docs/ok.md", BODY)
    with pytest.raises(IngestError, match=r"ingest\.follow_external_links = \"yes\" is not true or false"):
        stage(tmp_path, ["docs"], follow_external_links="yes")


def test_shipped_params_keep_external_links_off() -> None:
    assert shipped_params("ingest")["follow_external_links"] is False


# ---------------------------------------------------------------- pptx, odt, rtf


def make_pptx(path: Path) -> None:
    import pptx
    from pptx.util import Inches

    deck = pptx.Presentation()
    slide = deck.slides.add_slide(deck.slide_layouts[1])  # title and content
    slide.shapes.title.text = "Quy trình nghỉ phép"
    body = slide.placeholders[1].text_frame
    body.text = "Đăng ký trên LamHR"
    item = body.add_paragraph()
    item.text = "trước ba ngày làm việc"
    item.level = 1
    slide = deck.slides.add_slide(deck.slide_layouts[5])  # title only
    slide.shapes.title.text = "Mức phụ cấp"
    table = slide.shapes.add_table(2, 2, Inches(1), Inches(2), Inches(4), Inches(1)).table
    for r, row in enumerate([("Hạng", "Mức"), ("Nhân viên", "500.000 đồng")]):
        for c, value in enumerate(row):
            table.cell(r, c).text = value
    box = slide.shapes.add_textbox(Inches(1), Inches(4), Inches(4), Inches(1))
    box.text_frame.text = BODY
    deck.save(str(path))


def make_odt(path: Path) -> None:
    from odf import dc, table, text
    from odf.opendocument import OpenDocumentText

    document = OpenDocumentText()
    document.meta.addElement(dc.Title(text="Chính sách làm việc từ xa"))
    document.text.addElement(text.H(outlinelevel=1, text="Phạm vi"))
    document.text.addElement(text.P(text=BODY))
    items = text.List()
    item = text.ListItem()
    item.addElement(text.P(text="Tối đa hai ngày mỗi tuần"))
    items.addElement(item)
    document.text.addElement(items)
    grid = table.Table()
    for values in [("Hạng", "Mức"), ("Nhân viên", "500.000 đồng")]:
        row = table.TableRow()
        for value in values:
            cell = table.TableCell()
            cell.addElement(text.P(text=value))
            row.addElement(cell)
        grid.addElement(row)
    document.text.addElement(grid)
    document.save(str(path))


RTF = (
    r"{\rtf1\ansi\ansicpg1252\deff0{\fonttbl{\f0 Times New Roman;}}"
    r"\f0 Quy tr\u236?nh \u273?\u259?ng k\u253? ngh\u7881? ph\u233?p\par "
    r"Nh\u226?n vi\u234?n \u273?\u259?ng k\u253? tr\u234?n c\u7893?ng LamHR tr\u432?\u7899?c ba ng\u224?y l\u224?m vi\u7879?c.\par}"
)


def office_files(docs: Path, slides: str = "slides", remote: str = "remote", leave: str = "leave") -> None:
    """A new folder ``docs`` with a PPTX, an ODT and an RTF file of these names."""
    docs.mkdir(parents=True)
    make_pptx(docs / f"{slides}.pptx")
    make_odt(docs / f"{remote}.odt")
    write(docs / f"{leave}.rtf", RTF)


def test_pptx_odt_and_rtf_are_read(tmp_path: Path) -> None:
    docs = tmp_path / "corpus/docs"
    office_files(docs)
    documents, quarantine, metrics = stage(tmp_path, ["docs"])
    assert quarantine == []
    by_id = {d["doc_id"]: d for d in documents}
    slides = by_id["slides"]
    assert slides["title"] == "Quy trình nghỉ phép"
    assert slides["text"] == (
        "## Quy trình nghỉ phép\n\nĐăng ký trên LamHR\n- trước ba ngày làm việc\n\n## Mức phụ cấp\n\n"
        f"Hạng | Mức\nNhân viên | 500.000 đồng\n\n{BODY}"
    )
    odt = by_id["remote"]
    assert odt["title"] == "Chính sách làm việc từ xa"
    assert odt["text"] == f"## Phạm vi\n\n{BODY}\n\n- Tối đa hai ngày mỗi tuần\n\nHạng | Mức\nNhân viên | 500.000 đồng"
    rtf = by_id["leave"]
    assert rtf["text"] == ("Quy trình đăng ký nghỉ phép\n\nNhân viên đăng ký trên cổng LamHR trước ba ngày làm việc.")
    assert rtf["title"] == "Quy trình đăng ký nghỉ phép"
    assert metrics["documents"]["by_format"] == {"odt": 1, "pptx": 1, "rtf": 1}
    assert_balanced(quarantine, metrics)


def test_every_folder_format_has_a_reader() -> None:
    assert set(FOLDER_FORMATS) == set(READERS)


# ---------------------------------------------------------------- corrupt packages say what they are


def _zip_without_office_parts(path: Path) -> None:
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("hello.txt", "không phải tài liệu Office")


@pytest.mark.parametrize("fmt", ["docx", "pptx", "odt"])
def test_a_corrupt_office_file_says_what_it_probably_is(tmp_path: Path, fmt: str) -> None:
    docs = tmp_path / "corpus/docs"
    write(docs / f"renamed-doc.{fmt}", b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\0" * 512)  # an old binary file
    write(docs / f"truncated.{fmt}", b"PK\x03\x04 cut short by a download")
    _zip_without_office_parts(docs / f"wrong-zip.{fmt}")
    write(docs / "ok.md", BODY)
    documents, quarantine, metrics = stage(tmp_path, ["docs"])
    assert [d["doc_id"] for d in documents] == ["ok"]
    errors = {Path(q["source"]).stem: q["record"]["error"] for q in quarantine}
    assert {q["reason"] for q in quarantine} == {"unreadable_file"}
    assert f"not a valid .{fmt}: it is an old binary" in errors["renamed-doc"]
    assert f"not a valid .{fmt}" in errors["truncated"] and "old binary file renamed" in errors["truncated"]
    assert f"a damaged .{fmt}" in errors["wrong-zip"]
    assert all(f"save it as .{fmt}" in e for e in errors.values())
    assert not any("Package not found" in e.split("(")[0] for e in errors.values())
    assert metrics["files"]["read"] == 4  # handed to a reader: the documents balance counts them
    assert_balanced(quarantine, metrics)


def test_a_file_that_is_not_rtf_is_quarantined(tmp_path: Path) -> None:
    write(tmp_path / "corpus/docs/plain.rtf", BODY)
    write(tmp_path / "corpus/docs/ok.md", BODY + " Khác.")
    documents, quarantine, _ = stage(tmp_path, ["docs"])
    assert [d["doc_id"] for d in documents] == ["ok"]
    assert quarantine[0]["reason"] == "unreadable_file" and "rename it to .txt" in quarantine[0]["record"]["error"]


def test_a_large_folder_is_read_by_a_worker_pool_with_the_same_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """From PARALLEL_MIN_FILES files a folder's files are extracted by worker processes a window ahead; documents,
    quarantine and metrics are the same bytes as reading them here, with office formats, a corrupt file, a
    duplicate, an unsupported entry and a table source interleaved in the output order."""
    from ragtune.ingest import run as ingest_run

    def corpus(root: Path) -> None:
        docs = root / "corpus/docs"
        office_files(docs, "b-slides", "c-remote", "d-leave")
        write(docs / "e-broken.rtf", "not rtf at all")
        write(docs / "f-copy.md", f"# Mục 0\n\n{BODY} Khỏe  mạnh, hòa giải số 0.")  # h0.md's text: a duplicate
        write(docs / "g-notes.xyz", "unsupported")
        for i in range(6):
            write(docs / f"h{i}.md", f"# Mục {i}\n\n{BODY} Khỏe  mạnh, hòa giải số {i}.")
        write(root / "corpus/quick.csv", "id,text\nQ1,Đặt phòng họp trên lịch chung ít nhất một ngày trước buổi họp.\n")

    def run(workers: int) -> list[bytes]:  # the same root each time: error messages name the file's full path
        monkeypatch.setenv("RAGTUNE_WORKERS", str(workers))
        root = tmp_path / "repo"
        shutil.rmtree(root, ignore_errors=True)
        corpus(root)
        stage(root, ["docs", "quick.csv"])
        paths = Paths(root)
        return [p.read_bytes() for p in (paths.documents, paths.ingest_quarantine, paths.metrics("ingest"))]

    one = run(1)
    used = []
    real = ingest_run.ordered_map
    monkeypatch.setattr(ingest_run, "ordered_map", lambda *a, **k: used.append(k["parallel"]) or real(*a, **k))
    monkeypatch.setattr(ingest_run, "PARALLEL_MIN_FILES", 2)
    assert run(2) == one
    assert used == [True]
    reasons = {q["source"].rsplit("/", 1)[-1]: q["reason"] for q in map(json.loads, one[1].decode().splitlines())}
    assert reasons == {
        "e-broken.rtf": "unreadable_file",
        "g-notes.xyz": "unsupported_format:.xyz",
        "h0.md": "duplicate_text",
    }
    kept = [json.loads(line)["doc_id"] for line in one[0].decode().splitlines()]
    assert kept == ["b-slides", "c-remote", "d-leave", "f-copy", "h1", "h2", "h3", "h4", "h5", "Q1"]
