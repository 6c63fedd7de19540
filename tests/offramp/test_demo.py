import pyarrow.parquet as pq
import pytest

from offramp.demo import build_demo_corpus, read_packages

PACKAGES = """Package: libfoo-perl
Source: libfoo-perl
Section: perl
Description: Perl module for frobbing foos
Description-md5: aaa

Package: foo-doc
Source: libfoo-perl
Section: doc
Description: documentation for foo
Description-md5: bbb

Package: bar
Section: contrib/net
Description: network bar tool
Description-md5: ccc

Package: oddball
Section: kernel
Description: not one of the 30 sections
"""

TRANSLATION = """Package: libfoo-perl
Description-md5: aaa
Description-en: Perl module for frobbing foos
 It frobs foos quickly.
 .
 Second paragraph.
"""


@pytest.fixture
def lists(tmp_path):
    (tmp_path / "deb_dists_bookworm_main_binary-amd64_Packages").write_text(PACKAGES)
    (tmp_path / "deb_dists_bookworm_main_i18n_Translation-en").write_text(TRANSLATION)
    return str(tmp_path)


def test_packages_parse_with_sections_and_long_descriptions(lists):
    pkgs = {p.name: p for p in read_packages(lists)}
    assert set(pkgs) == {"libfoo-perl", "foo-doc", "bar"}  # kernel is not a demo section
    assert pkgs["bar"].section == "net"  # contrib/ prefix dropped
    assert pkgs["libfoo-perl"].text == "Perl module for frobbing foos\nIt frobs foos quickly.\n\nSecond paragraph."
    assert pkgs["foo-doc"].source == "libfoo-perl"


def test_splits_never_separate_sibling_binaries(lists, tmp_path):
    counts = build_demo_corpus(str(tmp_path / "out"), lists, dev_pct=0, test_pct=50)
    assert sum(counts.values()) == 3
    for split in ("train", "dev", "test"):
        t = pq.read_table(tmp_path / "out" / f"{split}.parquet").to_pydict()
        assert set(t) == {"id", "text", "label", "source"}
        if "libfoo-perl" in t["id"]:
            assert "foo-doc" in t["id"]


def test_missing_lists_name_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get update"):
        read_packages(str(tmp_path))
