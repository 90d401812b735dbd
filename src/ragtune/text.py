"""Vietnamese text normalization: one canonical form for every document and query.

Retrieval compares strings, so two spellings of the same word are two different words to BM25 and two
different token sequences to the embedder. Vietnamese text in the wild has four common sources of such
spurious variation, each handled here as a pure function:

* encoding damage (UTF-8 read as Latin-1/CP1252, "Dá»±a trÃªn" for "Dựa trên") → :func:`repair_mojibake`;
* decomposed vs precomposed letters (macOS, Windows-1258 files) → Unicode NFC;
* tone-mark placement, "hòa" vs "hoà" (both correct, used interchangeably) → :func:`normalize_tone_marks`;
* invisible characters and whitespace noise from PDF/DOCX/HTML extraction → whitespace cleanup.

:func:`decode_bytes` turns raw file bytes into text without ever guessing silently into U+FFFD.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from typing import Literal

import charset_normalizer
import ftfy
import ftfy.bad_codecs  # registers the "sloppy-windows-1252" codec used below

ToneStyle = Literal["old", "new"]


class DecodeError(ValueError):
    """Bytes that are not text in any encoding we can trust; ingest quarantines the file."""


# --------------------------------------------------------------------------------------------------------------
# Mojibake
# --------------------------------------------------------------------------------------------------------------

# Characters a CP1252/Latin-1 decoder produces for UTF-8 continuation bytes 0x80–0xBF.
_CONT = "\x80-\xbf€‚ƒ„…†‡ˆ‰Š‹ŒŽ‘’“”•–—˜™š›œžŸ"
# A UTF-8 lead byte (as Latin-1 text) followed by a continuation byte: the signature of mojibake. Correct
# Vietnamese almost never has e.g. "Ã" directly followed by "¡" or "á" by "»"; ftfy checks the rest.
_MOJIBAKE_MARK = re.compile(f"[\xc2-\xf4][{_CONT}]")
# A lost non-breaking space: "à" is C3 A0 in UTF-8, and HTML/whitespace cleanup often turns the A0 into a
# plain space, leaving "vÃ " for "và". Same for Ơ (C6 A0), Ạ (E1 BA A0), Ỡ (E1 BB A0).
_LOST_A0 = re.compile("(?<=[ÃÆ]) |(?<=á[º»]) ")
# An upper-case word ending in a Latin-1 capital, then punctuation that is also a UTF-8 continuation byte.
_UPPER_WORD_PUNCT = re.compile(
    "(?<![^\\W\\d_])(?<![\x80-\x9f])([^\\W\\d_]*[ÀÁÂÃÈÉÊÌÍÒÓÔÕÙÚÝ])([”’“‘•–—…™›»])(?![^\\W\\d_])"
)
# One UTF-8-encoded character as a CP1252/Latin-1 decoder shows it: lead byte + 1, 2 or 3 continuation bytes.
_UTF8_RUN = re.compile(f"[\xc2-\xdf][{_CONT}]|[\xe0-\xef][{_CONT}]{{2}}|[\xf0-\xf4][{_CONT}]{{3}}")


# Anything _badness counts: text without a match (nearly all text) needs no repair, found with one regex search.
_ANY_BAD = re.compile(f"[\xc2-\xf4][{_CONT}]|[\x80-\x9f\ufffd]")


def _badness(s: str) -> int:
    """How mojibake-like a string looks: lead+continuation pairs, stray C1 controls, replacement chars."""
    c1 = sum(1 for ch in s if "\x80" <= ch <= "\x9f")
    return len(_MOJIBAKE_MARK.findall(s)) + c1 + s.count("\ufffd")


def _is_pure_latin1ish(s: str) -> bool:
    """True when every character could have come from a CP1252/Latin-1 decoder (the whole text is mojibake)."""
    try:
        s.encode("sloppy-windows-1252")
    except UnicodeEncodeError:
        return False
    return True


def _decode_utf8_run(match: re.Match[str]) -> str:
    """Re-decode one mojibake run ("á»±" → "ự"); keep it as is unless the bytes give clean Latin text."""
    run = match.group(0)
    try:
        # Latin-1 decoders leave bytes 0x80–0x9F as C1 controls, CP1252 ones as "€‚ƒ…": accept either.
        raw = b"".join(bytes([ord(ch)]) if ord(ch) < 0x100 else ch.encode("windows-1252") for ch in run)
        fixed = raw.decode("utf-8")
    except UnicodeError:
        return run
    # "Ó”" (as in “CÓ”) is also valid UTF-8 but decodes to Cyrillic "Ӕ": only accept Latin/punctuation results.
    return run if any(_weird(ch) for ch in fixed) else fixed


def _repair_runs(s: str) -> str:
    """Repair mojibake sequences one UTF-8 character at a time, for text that mixes damaged and correct parts.

    ftfy only re-decodes a segment when all of it is CP1252-encodable and valid UTF-8, so "Dựa Dá»±a" (one
    correct, one damaged word) is left alone; here each lead+continuation sequence is tried on its own.
    Repeated for double encoding.
    """
    for _ in range(3):
        fixed = _UTF8_RUN.sub(_decode_utf8_run, s)
        if fixed == s:
            break
        s = fixed
    return s


def _protect_upper_words(s: str) -> tuple[str, dict[str, str]]:
    """Hide the punctuation after upper-case words like "ĐÃ" in “ĐÃ”, which ftfy would turn into "ĐÔ".

    "Ã”" is both the CP1252 view of "Ô" (C3 94) and a real Vietnamese capital followed by a closing quote.
    It is real text when the word around it is a whole upper-case word, the quote ends it, and the text also
    has correctly decoded Vietnamese (letters like "Đ", "ư", "ạ" that CP1252 cannot show); in mojibake the
    pair sits inside a word ("CÃ”NG") or in text that is all CP1252. The punctuation is swapped for
    private-use placeholders during repair and put back afterwards.
    """
    protected: dict[str, str] = {}

    def hide(m: re.Match[str]) -> str:
        if not m.group(1).isupper():
            return m.group(0)
        placeholder = chr(0xF0000 + len(protected))
        protected[placeholder] = m.group(2)
        return m.group(1) + placeholder

    return _UPPER_WORD_PUNCT.sub(hide, s), protected


def repair_mojibake(s: str) -> tuple[str, bool]:
    """Undo UTF-8-decoded-as-Latin-1/CP1252 damage (also double encoding); return ``(text, repaired)``.

    ftfy does the byte-level round trip and only commits when the result decodes as valid UTF-8; we use only
    its encoding fixers (``fix_encoding``), never its quote uncurling or width folding, which would silently
    rewrite correct text. What ftfy leaves (mixed correct + damaged text) goes through :func:`_repair_runs`.
    A repair is accepted only when it strictly lowers :func:`_badness`, so correct Vietnamese (including
    upper-case "Ã" as in "ĐÃ", "NGÃ BA") is never touched. The lost-NBSP variant ("vÃ y") is retried only
    when the whole text is Latin-1-looking, because in mixed text "Ã " can be a real letter and a space.
    """
    original = s
    if not _ANY_BAD.search(s):  # badness 0, also after the protection below (it only removes characters)
        return original, False
    # In text that is all CP1252-encodable (pure mojibake), "Ã”" is the damage itself: protect nothing there.
    s, protected = (s, {}) if _is_pure_latin1ish(s) else _protect_upper_words(s)
    before = _badness(s)
    if before == 0:
        return original, False
    best = ftfy.fix_encoding(s)
    if _LOST_A0.search(s) and _is_pure_latin1ish(s):
        restored = ftfy.fix_encoding(_LOST_A0.sub("\xa0", s))
        if _badness(restored) <= _badness(best):
            best = restored
    if _badness(best) > 0:
        best = _repair_runs(best)
    if best != s and _badness(best) < before:
        for placeholder, char in protected.items():
            best = best.replace(placeholder, char)
        return best, True
    return original, False


# --------------------------------------------------------------------------------------------------------------
# Tone marks
# --------------------------------------------------------------------------------------------------------------

_TONE_MARKS = {"\u0300", "\u0301", "\u0303", "\u0309", "\u0323"}  # huyền, sắc, ngã, hỏi, nặng
# Onsets that may precede an open "oa"/"oe"/"uy" rime. "qu" is deliberately absent: in "quý" the "u" belongs
# to the onset and the tone sits on "y" in both styles. Requiring a real onset also keeps foreign words
# ("Chloé") out.
_ONSETS = frozenset(
    [*"b c ch d đ g gh h k kh l m n ng ngh nh p ph r s t th tr v x".split(" "), ""]  # noqa: SIM905
)
_RIMES = {("o", "a"), ("o", "e"), ("u", "y")}
_WORD = re.compile(r"[^\W\d_]+")


def _with_tones(letters: str) -> str:
    """A regex character class of ``letters`` in both cases, bare and with each tone mark (NFC)."""
    chars = {unicodedata.normalize("NFC", c + t) for c in letters + letters.upper() for t in ["", *_TONE_MARKS]}
    return "[" + "".join(sorted(chars)) + "]"


# The only words _retone_word can change end in o+a, o+e or u+y (toned or not): matching those rimes alone, at a
# word's end, skips the Python call for the other 99% of words (ingest spent 60% of its time here). The letters
# before the rime are looked at only on a match: a regex that starts at every word and backtracks to its last two
# letters cost 60 µs a document.
_RIME_AT_WORD_END = re.compile(
    "(?:" + _with_tones("o") + _with_tones("ae") + "|" + _with_tones("u") + _with_tones("y") + r")(?![^\W\d_])"
)
_LETTERS_AT_END = re.compile(r"[^\W\d_]*\Z")


def _split_tone(ch: str) -> tuple[str, str]:
    """``"ỏ"`` → ``("o", "\\u0309")``; returns ``(ch, "")`` for letters with other diacritics or none."""
    decomposed = unicodedata.normalize("NFD", ch)
    if len(decomposed) == 2 and decomposed[1] in _TONE_MARKS:
        return decomposed[0], decomposed[1]
    return ch, ""


def _retone_word(word: str, style: ToneStyle) -> str:
    if len(word) < 2:
        return word
    (b1, t1), (b2, t2) = _split_tone(word[-2]), _split_tone(word[-1])
    if (b1.lower(), b2.lower()) not in _RIMES or bool(t1) == bool(t2):
        return word
    if word[:-2].lower() not in _ONSETS:
        return word
    tone = t1 or t2
    if style == "old":
        first, second = unicodedata.normalize("NFC", b1 + tone), b2
    else:
        first, second = b1, unicodedata.normalize("NFC", b2 + tone)
    return word[:-2] + first + second


def normalize_tone_marks(s: str, style: ToneStyle = "old") -> str:
    """Put the tone of open "oa", "oe", "uy" rimes in one place: ``old`` hòa/khỏe/thủy, ``new`` hoà/khoẻ/thuỷ.

    Both placements are correct Vietnamese and appear side by side in real corpora, so without this "hòa" in
    a query would not match "hoà" in a document. Only these three open rimes differ between the styles;
    closed syllables ("hoàng", "tuyển", "khuyên"), three-vowel rimes ("ngoài", "khuỷu") and the "qu" onset
    ("quý") have one placement and are left alone. Input must be NFC.
    """
    if style not in ("old", "new"):
        raise ValueError(f"tone style must be 'old' or 'new', got {style!r} (params.yaml: ingest.tone_style)")

    def retone(m: re.Match[str]) -> str:
        # The word is the letters before the rime and the rime. An onset has at most 3 letters ("ngh"), so 4
        # letters before the rime mean a word _retone_word leaves alone (its onset is not in _ONSETS).
        start = m.start()
        onset = _LETTERS_AT_END.search(s, max(0, start - 4), start).group(0)  # type: ignore[union-attr]
        if len(onset) == 4:
            return m.group(0)
        return _retone_word(onset + m.group(0), style)[len(onset) :]

    return _RIME_AT_WORD_END.sub(retone, s)


# --------------------------------------------------------------------------------------------------------------
# Whitespace and invisible characters
# --------------------------------------------------------------------------------------------------------------

_INVISIBLE = re.compile("[\u00ad\u200b\u200c\u200d\u2060\ufeff]")  # soft hyphen, zero-width chars, BOM
_NEWLINES = re.compile("\r\n|[\r\u2028\u2029\x0b\x0c\x85]")
# C0/C1 control characters other than tab and newline carry no text and break tokenizers.
_CONTROLS = re.compile("[\x00-\x08\x0e-\x1f\x7f-\x9f]")
_BLANK_RUNS = re.compile(r"\n{3,}")
# Anything the three substitutions above would change, found with one search.
_ODD_LINE_BREAKS_OR_INVISIBLE = re.compile("|".join(p.pattern for p in (_NEWLINES, _INVISIBLE, _CONTROLS)))
# Space characters to make one " ": a run of two or more, or a single one that is not " ".
_SPACE_CHARS = "\t\u00a0\u1680\u2000-\u200a\u202f\u205f\u3000"  # besides " "
_SPACES_TO_FIX = re.compile(f"[ {_SPACE_CHARS}]{{2,}}|[{_SPACE_CHARS}]")
_SPACE_AROUND_NEWLINE = re.compile(" ?\n ?")


def clean_whitespace(s: str) -> str:
    """One space between words, no indentation or trailing spaces, at most one blank line between paragraphs.

    Extracted text carries layout (PDF columns, DOCX tabs, HTML indentation) that means nothing to
    retrieval but changes token counts and chunk boundaries; paragraph breaks are kept because the chunker
    splits on them.
    """
    if _ODD_LINE_BREAKS_OR_INVISIBLE.search(s):  # rare: one search instead of three substitutions
        s = _NEWLINES.sub("\n", s)
        s = _INVISIBLE.sub("", s)
        s = _CONTROLS.sub("", s)
    # Now the only whitespace left that str.strip would strip is _SPACE_CHARS, " " and "\n" (the other isspace()
    # characters are line breaks or controls, replaced above): runs become one space, then each line loses the one
    # space it may have at either end. Only what changes is matched: most spaces are single already.
    s = _SPACES_TO_FIX.sub(" ", s)
    s = _SPACE_AROUND_NEWLINE.sub("\n", s)
    return _BLANK_RUNS.sub("\n\n", s).strip()


def normalize_text(s: str, tone_style: ToneStyle = "old") -> str:
    """The canonical form of a document or query: mojibake repaired, NFC, one tone style, clean whitespace."""
    return normalize_text_with_flags(s, tone_style)[0]


def normalize_text_with_flags(s: str, tone_style: ToneStyle = "old") -> tuple[str, bool]:
    """:func:`normalize_text` that also says whether mojibake was repaired (counted in ingest metrics)."""
    repaired_text, repaired = repair_mojibake(s)
    text = unicodedata.normalize("NFC", repaired_text)
    text = normalize_tone_marks(text, tone_style)
    return clean_whitespace(text), repaired


# --------------------------------------------------------------------------------------------------------------
# Decoding
# --------------------------------------------------------------------------------------------------------------

_BOMS = (  # UTF-32 before UTF-16: the UTF-32-LE BOM starts with the UTF-16-LE one
    (b"\x00\x00\xfe\xff", "utf-32-be"),
    (b"\xff\xfe\x00\x00", "utf-32-le"),
    (b"\xef\xbb\xbf", "utf-8-sig"),
    (b"\xfe\xff", "utf-16-be"),
    (b"\xff\xfe", "utf-16-le"),
)
_VI_BASES = "aăâeêioôơuưy"
_VI_LETTERS = frozenset(
    unicodedata.normalize("NFC", base + tone) for base in _VI_BASES + _VI_BASES.upper() for tone in ("", *_TONE_MARKS)
) | {"đ", "Đ"}
_MAX_WEIRD_FRACTION = 0.02


def _weird(ch: str) -> bool:
    """Characters that do not occur in Vietnamese/Latin prose: controls, unassigned, private use, other scripts."""
    if ch in "\t\n\r\x0c":
        return False
    cat = unicodedata.category(ch)
    if cat[0] == "C":
        return True
    if cat[0] == "M":  # a combining mark left over after NFC has no base it belongs to
        return True
    if cat[0] == "L":
        return not unicodedata.name(ch, "").startswith("LATIN")
    return False


def _is_vietnamese_word(word: str) -> bool:
    """A word spelled with Vietnamese letters and at most one tone mark (every Vietnamese syllable has one)."""
    tones = 0
    for ch in word:
        if ch.isascii():
            continue
        if ch not in _VI_LETTERS:
            return False
        tones += any(mark in _TONE_MARKS for mark in unicodedata.normalize("NFD", ch))
    return tones <= 1


def _plausibility(text: str) -> tuple[int, int]:
    """Sort key (lower is better): fewest weird characters, then most well-formed non-ASCII Vietnamese words.

    Counting words rather than letters matters: Windows-1258 bytes read as CP1252 still give Latin letters
    ("ÐiêÌu" for "Điều"), but never well-formed syllables.
    """
    text = unicodedata.normalize("NFC", text)
    weird = sum(1 for ch in text if _weird(ch))
    score = 0
    for word in _WORD.findall(text):
        if not word.isascii():
            score += 1 if _is_vietnamese_word(word) else -1
    return weird, -score


def decode_bytes(data: bytes) -> tuple[str, str]:
    """Decode a text file's bytes and return ``(text, encoding)``; raise :class:`DecodeError` if it is not text.

    Order: BOM, strict UTF-8 (nearly all modern files), then charset-normalizer's guess competing with the
    two legacy encodings Vietnamese text actually comes in (Windows-1258, and Windows-1252 for the
    Western-European parts of mixed corpora). charset-normalizer alone is unreliable on short Vietnamese text
    (it picks cp1006 or cp1250), so every candidate is decoded strictly and the most plausible one wins:
    fewest characters from outside Latin prose, then most Vietnamese letters. A strict decoder never inserts
    U+FFFD, so a wrong guess can only win if it looks like clean text.
    """
    for bom, encoding in _BOMS:
        if data.startswith(bom):
            try:
                return data[len(bom) :].decode(encoding.replace("-sig", "")), encoding
            except UnicodeDecodeError as exc:
                raise DecodeError(f"has a {encoding} byte-order mark but is not valid {encoding}: {exc}") from exc
    try:
        return data.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        pass
    candidates: list[str] = ["cp1258", "cp1252"]
    guess = charset_normalizer.from_bytes(data).best()
    if guess is not None and guess.encoding not in candidates:
        candidates.append(guess.encoding)
    decoded: list[tuple[tuple[int, int], int, str, str]] = []
    for rank, encoding in enumerate(candidates):
        try:
            text = data.decode(encoding)
        except (UnicodeDecodeError, LookupError):
            continue
        decoded.append((_plausibility(text), rank, text, encoding))
    if not decoded:
        raise DecodeError("is neither UTF-8 nor a recognizable legacy encoding (tried " + ", ".join(candidates) + ")")
    (weird, _), _, text, encoding = min(decoded)
    if weird > _MAX_WEIRD_FRACTION * max(1, len(text)):
        raise DecodeError(
            f"does not look like text (best guess {encoding} gives {weird} control/foreign characters); "
            "save it as UTF-8"
        )
    return text, encoding


def text_digest(text: str) -> bytes:
    """A 16-byte BLAKE2b digest: two texts share one only if they are equal (a collision is 2^-64 likely at 4
    billion texts). Lets a stage remember which texts it has seen without holding them."""
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()
