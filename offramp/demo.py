"""Build the demo corpus from apt's package lists, present on every Debian machine.

`../shared/data/debian_sections` was built from the same source (bookworm main
package metadata). A fresh machine has apt's `Packages` index but usually not the
long descriptions (`Translation-en` is only fetched when Acquire::Languages asks
for it), so the demo text is the package's short description, joined with its long
description when a `Translation-en` list is there.
"""

from __future__ import annotations

import glob
import hashlib
import logging
import lzma
import gzip
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

logger = logging.getLogger(__name__)

APT_LISTS = "/var/lib/apt/lists"

# The 30 sections of ../shared/data/debian_sections, so the demo model and the
# benchmark model speak the same label set.
SECTIONS = (
    "admin devel doc fonts games gnome gnu-r golang graphics haskell java javascript "
    "libdevel libs lisp math misc net ocaml perl php python ruby rust science sound "
    "text utils web x11"
).split()


@dataclass(frozen=True)
class Package:
    name: str
    source: str
    section: str
    text: str


def _open_list(path: str) -> str:
    """Read an apt list file whatever its compression (apt stores lz4 by default)."""
    if path.endswith(".lz4"):
        return subprocess.run(["lz4", "-dc", path], check=True, capture_output=True).stdout.decode(
            "utf-8", errors="replace"
        )
    if path.endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8", errors="replace").read()
    if path.endswith(".xz"):
        return lzma.open(path, "rt", encoding="utf-8", errors="replace").read()
    return Path(path).read_text(encoding="utf-8", errors="replace")


def _stanzas(text: str):
    """Yield RFC822-style stanzas as {field: value}; continuation lines are joined."""
    for block in text.split("\n\n"):
        fields: dict[str, str] = {}
        key = None
        for line in block.splitlines():
            if line.startswith((" ", "\t")) and key is not None:
                body = line.strip()
                fields[key] += "\n" + ("" if body == "." else body)
            elif ":" in line:
                key, _, value = line.partition(":")
                fields[key] = value.strip()
        if fields:
            yield fields


def _list_files(lists_dir: str, suffix: str) -> list[str]:
    return sorted(
        p for p in glob.glob(os.path.join(lists_dir, f"*{suffix}*")) if not p.endswith((".diff", "_Index"))
    )


def read_packages(lists_dir: str = APT_LISTS) -> list[Package]:
    """Parse every `Packages` list under `lists_dir` into labeled packages (one per name)."""
    files = _list_files(lists_dir, "_Packages")
    if not files:
        raise FileNotFoundError(
            f"no apt Packages lists under {lists_dir}; run `apt-get update` (as root) to fetch them"
        )
    long_desc: dict[str, str] = {}
    for path in _list_files(lists_dir, "_i18n_Translation-en"):
        for st in _stanzas(_open_list(path)):
            if "Description-md5" in st and "Description-en" in st:
                long_desc[st["Description-md5"]] = st["Description-en"]
    seen: dict[str, Package] = {}
    for path in files:
        for st in _stanzas(_open_list(path)):
            name, section = st.get("Package"), st.get("Section", "")
            section = section.rsplit("/", 1)[-1]  # contrib/net -> net
            if not name or name in seen or section not in SECTIONS:
                continue
            text = long_desc.get(st.get("Description-md5", ""), st.get("Description", ""))
            if not text.strip():
                continue
            source = st.get("Source", name).split(" ")[0]
            seen[name] = Package(name=name, source=source, section=section, text=text.strip())
    return list(seen.values())


def _split_of(source: str, dev_pct: int, test_pct: int) -> str:
    """Stable split by source package, so sibling binaries never straddle splits."""
    bucket = int(hashlib.sha1(source.encode()).hexdigest(), 16) % 100
    if bucket < test_pct:
        return "test"
    if bucket < test_pct + dev_pct:
        return "dev"
    return "train"


def build_demo_corpus(out_dir: str, lists_dir: str = APT_LISTS, dev_pct: int = 10, test_pct: int = 10) -> dict[str, int]:
    """Write train/dev/test Parquet files (id, text, label, source); return row counts."""
    packages = read_packages(lists_dir)
    rows: dict[str, list[Package]] = {"train": [], "dev": [], "test": []}
    for p in packages:
        rows[_split_of(p.source, dev_pct, test_pct)].append(p)
    os.makedirs(out_dir, exist_ok=True)
    counts = {}
    for split, items in rows.items():
        table = pa.table(
            {
                "id": [p.name for p in items],
                "text": [p.text for p in items],
                "label": [p.section for p in items],
                "source": [p.source for p in items],
            }
        )
        pq.write_table(table, os.path.join(out_dir, f"{split}.parquet"))
        counts[split] = len(items)
    logger.info("demo corpus in %s: %s", out_dir, counts)
    return counts
