"""Vietnamese text normalization: mojibake repair, tone-mark styles, NFC, whitespace, decoding."""

import unicodedata

import pytest

from ragtune.text import (
    DecodeError,
    clean_whitespace,
    decode_bytes,
    normalize_text,
    normalize_tone_marks,
    repair_mojibake,
)

CORRECT = [
    "Dựa trên quy định của Luật này, người lao động được nghỉ phép năm hưởng nguyên lương.",
    "Hòa bình, thủy lợi, khỏe mạnh, Quý khách, Nguyễn Thị Ánh, ĐẠI HỘI ĐỒNG CỔ ĐÔNG.",
    "Ở Đà Nẵng, Ủy ban nhân dân ước tính Ấn Độ; Chương I. ĐIỀU KHOẢN CHUNG.",
    "Người nghiện ma túy từ đủ 18 tuổi trở lên bị áp dụng biện pháp xử lý hành chính.",
    "Mật khẩu phải có ít nhất mười hai ký tự, bao gồm chữ hoa, chữ thường và chữ số.",
    "TRẠNG THÁI: ĐÃ DUYỆT. NGÃ BA HUẾ. BÃO SỐ 3 ĐÃ Ở ĐÂY. Ông Ân, bà Ấu.",
]
# Correct text that contains mojibake-looking pairs ("à”" is C3 94 in CP1252, "Ó”" decodes to Cyrillic).
LOOKALIKES = [
    "Anh ấy nói “và” rồi đi.",
    "Câu trả lời là “CÓ”.",
    "Giá 100 € và ™, ©2024 — chữ “Ã”",
    "Ã",
    "ĐÃ XONG",
    "Trạng thái chuyển sang “ĐÃ”, đơn vị “XÃ” và “NGÃ” ba.",  # ftfy alone turns these into “ĐÔ …
]


@pytest.mark.parametrize("text", CORRECT)
@pytest.mark.parametrize("damage", ["latin-1", "sloppy-windows-1252", "double"])
def test_repair_mojibake_round_trips(text: str, damage: str) -> None:
    if damage == "double":
        once = text.encode("utf-8").decode("sloppy-windows-1252")
        broken = once.encode("utf-8").decode("sloppy-windows-1252")
    else:
        broken = text.encode("utf-8").decode(damage)
    assert broken != text
    assert repair_mojibake(broken) == (text, True)


@pytest.mark.parametrize("text", CORRECT + LOOKALIKES)
def test_repair_mojibake_never_touches_correct_text(text: str) -> None:
    assert repair_mojibake(text) == (text, False)


def test_repair_mojibake_upper_case_words_in_pure_mojibake() -> None:
    text = "Ô TÔ ĐÔ, “Ô” là “CÔ” CÔNG TY"
    assert repair_mojibake(text.encode().decode("sloppy-windows-1252")) == (text, True)


def test_repair_mojibake_lost_nbsp_and_mixed_text() -> None:
    # "à" is C3 A0; HTML cleanup often turns the A0 (NBSP) into a plain space.
    lost = "Luật này và là của bà".encode().decode("latin-1").replace("\xa0", " ")
    assert repair_mojibake(lost) == ("Luật này và là của bà", True)
    mixed = "Đúng: Dựa trên. Hỏng: " + "Dựa trên quy định".encode().decode("latin-1")
    assert repair_mojibake(mixed) == ("Đúng: Dựa trên. Hỏng: Dựa trên quy định", True)


# (old, new) pairs: only open oa/oe/uy rimes differ between the styles
TONE_PAIRS = [
    ("hòa", "hoà"), ("thủy", "thuỷ"), ("khỏe", "khoẻ"), ("Ủy", "Uỷ"), ("ủy", "uỷ"), ("HÒA", "HOÀ"),
    ("xóa", "xoá"), ("họa", "hoạ"), ("tỏa", "toả"), ("lũy", "luỹ"), ("ngụy", "nguỵ"), ("Tòa", "Toà"),
    ("thỏa", "thoả"), ("túy", "tuý"), ("hủy", "huỷ"), ("KHỎE", "KHOẺ"), ("òa", "oà"), ("Thủy", "Thuỷ"),
]  # fmt: skip
FIXED = [
    "quý",
    "quỳ",
    "Quý",
    "QUÝ",
    "hoàng",
    "tuyển",
    "khuyên",
    "ngoài",
    "khuỷu",
    "huỳnh",
    "thuở",
    "của",
    "già",
    "hoặc",
    "quả",
    "khoảng",
    "Chloé",
    "tòan",
]


@pytest.mark.parametrize(("old", "new"), TONE_PAIRS)
def test_tone_styles_both_ways(old: str, new: str) -> None:
    for word in (old, new):
        assert normalize_tone_marks(word, "old") == old
        assert normalize_tone_marks(word, "new") == new


def test_tone_marks_leave_fixed_placements_alone() -> None:
    for word in FIXED:
        assert normalize_tone_marks(word, "old") == word
        assert normalize_tone_marks(word, "new") == word


def test_tone_marks_in_a_sentence_and_bad_style() -> None:
    sentence = "Ủy ban hòa giải quý khách, tuyển dụng, khỏe mạnh (thủy lợi)."
    assert normalize_tone_marks(sentence, "new") == "Uỷ ban hoà giải quý khách, tuyển dụng, khoẻ mạnh (thuỷ lợi)."
    assert normalize_tone_marks(normalize_tone_marks(sentence, "new"), "old") == sentence
    with pytest.raises(ValueError, match="tone_style"):
        normalize_tone_marks(sentence, "modern")  # type: ignore[arg-type]


def test_normalize_text_nfc_tones_and_mojibake() -> None:
    decomposed = unicodedata.normalize("NFD", "Hoà bình và khoẻ mạnh")
    assert decomposed != unicodedata.normalize("NFC", decomposed)
    assert normalize_text(decomposed) == "Hòa bình và khỏe mạnh"
    assert normalize_text(decomposed, tone_style="new") == "Hoà bình và khoẻ mạnh"
    assert normalize_text("Dá»±a trÃªn") == "Dựa trên"


def test_clean_whitespace() -> None:
    raw = (
        "  Tiêu\u00a0đề\t\tchính  \r\n\r\n\r\n\r\nĐoạn\u200b một\u00ad dài.   \rDòng\u2028hai\n\n\n\n  Đoạn hai \ufeff"
    )
    assert clean_whitespace(raw) == "Tiêu đề chính\n\nĐoạn một dài.\nDòng\nhai\n\nĐoạn hai"
    assert normalize_text("\n\n  \u200b \n") == ""


VI = "Điều 1. Phạm vi điều chỉnh: luật này quy định về phòng, chống ma túy; người lao động được hưởng lương."


def _cp1258(text: str) -> bytes:
    """Windows-1258 spells toned letters as base letter + combining tone byte."""
    tones = {"\u0300", "\u0301", "\u0303", "\u0309", "\u0323"}
    out = b""
    for ch in text:
        try:
            out += ch.encode("cp1258")
        except UnicodeEncodeError:
            parts = unicodedata.normalize("NFD", ch)
            base = unicodedata.normalize("NFC", "".join(c for c in parts if c not in tones))
            out += base.encode("cp1258") + "".join(c for c in parts if c in tones).encode("cp1258")
    return out


@pytest.mark.parametrize(
    ("data", "encoding"),
    [
        (VI.encode("utf-8"), "utf-8"),
        (b"\xef\xbb\xbf" + VI.encode("utf-8"), "utf-8-sig"),
        (VI.encode("utf-16"), "utf-16-le"),
        (b"\xfe\xff" + VI.encode("utf-16-be"), "utf-16-be"),
        (VI.encode("utf-32"), "utf-32-le"),
        (_cp1258(VI), "cp1258"),
        (_cp1258("Hòa bình"), "cp1258"),  # too short for charset-normalizer alone (it says cp1006)
    ],
)
def test_decode_bytes(data: bytes, encoding: str) -> None:
    text, found = decode_bytes(data)
    assert found == encoding
    assert unicodedata.normalize("NFC", text) in (VI, "Hòa bình")


def test_decode_bytes_western_legacy_and_binary() -> None:
    text, _ = decode_bytes("Café crème brûlée, à la française".encode("cp1252"))
    assert text == "Café crème brûlée, à la française"
    for junk in (bytes(range(256)) * 4, b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x81\x8d\x90" * 20):
        with pytest.raises(DecodeError):
            decode_bytes(junk)
    with pytest.raises(DecodeError, match="byte-order mark"):
        decode_bytes(b"\xff\xfe\x00\xd8")  # UTF-16 BOM + a lone surrogate


def test_tone_normalization_touches_only_candidate_words_and_equals_every_word_rule() -> None:
    """The fast path (a regex for words ending in o+a, o+e, u+y) gives what applying the rule to every word gives."""
    import random
    import re
    import unicodedata

    from ragtune import text as T

    rng = random.Random(0)
    letters = "aăâeêioôơuưyđqhkgnctr" + "".join(
        unicodedata.normalize("NFC", v + t) for v in "aeiouy" for t in T._TONE_MARKS
    )
    words = ["".join(rng.choices(letters + letters.upper(), k=rng.randint(1, 6))) for _ in range(20_000)]
    words += ["hòa", "hoà", "thủy", "thuỷ", "KHOẺ", "quý", "ngoài", "khuỷu", "Chloé", "hoà1", "_hoà", "hoà_", "xOẠ"]
    text = unicodedata.normalize("NFC", " ".join(w + rng.choice([" ", "-", "1", "_", ".", "/"]) for w in words))
    for style in ("old", "new"):
        every_word = re.sub(r"[^\W\d_]+", lambda m, style=style: T._retone_word(m.group(0), style), text)
        assert T.normalize_tone_marks(text, style) == every_word
        assert every_word != text  # the sample holds words the rule changes


def _clean_whitespace_by_lines(s: str) -> str:
    """The rule clean_whitespace implements, spelled out: line breaks unified, invisible and control characters
    dropped, space runs made one space, every line stripped, at most one blank line, the ends stripped."""
    import re

    s = re.sub("\r\n|[\r\u2028\u2029\x0b\x0c\x85]", "\n", s)
    s = re.sub("[\u00ad\u200b\u200c\u200d\u2060\ufeff]", "", s)
    s = re.sub("[\x00-\x08\x0e-\x1f\x7f-\x9f]", "", s)
    lines = [line.strip() for line in re.sub("[ \t\u00a0\u1680\u2000-\u200a\u202f\u205f\u3000]+", " ", s).split("\n")]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def test_clean_whitespace_equals_the_line_by_line_rule_on_random_text() -> None:
    """The fast path (one search for rare characters, substitutions only where something changes) gives what the
    line-by-line rule gives, on text built from every kind of space, line break, invisible and control character."""
    import random
    import sys

    rng = random.Random(0)
    spaces = [chr(c) for c in range(sys.maxunicode + 1) if chr(c).isspace()]
    odd = ["\u00ad", "\u200b", "\u200c", "\u200d", "\u2060", "\ufeff", "\x00", "\x07", "\x1b", "\x7f", "\x9f", "\r\n"]
    alphabet = [*"aăđ Ở1_.", "hoà", "Điều", *spaces, *odd]
    texts = ["".join(rng.choices(alphabet, k=rng.randint(0, 40))) for _ in range(20_000)]
    changed = 0
    for text in texts:
        expected = _clean_whitespace_by_lines(text)
        assert clean_whitespace(text) == expected, repr(text)
        changed += expected != text
    assert changed > 10_000  # the sample exercises the rule, not only text it leaves alone
