"""Stand in for a benchmark's own train and test files: split ALQAC's labeled questions into two files by id.

Usage (repo root):  python examples/make_alqac_fixed_split.py [--out ../alqac2023-fixed]

Writes ``train.jsonl`` and ``test.jsonl`` (half of the questions each, by a hash of the id, so the split is the
same on every machine and owes nothing to the pipeline's seed) and a copy of ``corpus.jsonl`` into ``--out``,
outside the repository: data never goes into the repo. ``examples/alqac2023-fixed.params.yaml`` reads them with
``split: train`` / ``split: test``, as a user with a competition's train and test files would.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
from pathlib import Path

from ragtune.io import read_jsonl, write_jsonl

SOURCE = Path("../shared/datasets/alqac2023")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="../alqac2023-fixed", help="folder to write (outside the repo)")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    queries = read_jsonl(SOURCE / "queries_train.jsonl")
    is_test = {q["id"]: int(hashlib.sha256(q["id"].encode()).hexdigest(), 16) % 2 == 0 for q in queries}
    write_jsonl(out / "train.jsonl", [q for q in queries if not is_test[q["id"]]])
    write_jsonl(out / "test.jsonl", [q for q in queries if is_test[q["id"]]])
    shutil.copyfile(SOURCE / "corpus.jsonl", out / "corpus.jsonl")
    n_test = sum(is_test.values())
    print(f"wrote {out}/train.jsonl ({len(queries) - n_test} questions), test.jsonl ({n_test}), corpus.jsonl")


if __name__ == "__main__":
    main()
