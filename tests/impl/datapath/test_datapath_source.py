"""Bundling the BPF sources into one translation unit, and naming their map layout."""

from __future__ import annotations

import re

import pytest

from cni_cilium.datapath.source import SourceError, abi_digest, bundle

pytestmark = pytest.mark.unit

SOURCES = {
    "main.c": '#include "lib/a.h"\n#include "lib/b.h"\nint main_body;\n',
    "lib/a.h": '#include "lib/b.h"\nint a;\n',
    "lib/b.h": "int b;\n#include <linux/bpf.h>\n",
    "lib/maps.h": "struct m { int x; };\n",
}


def test_each_header_is_inlined_once_with_line_directives():
    text = bundle(SOURCES, "main.c")
    assert text.count("int b;") == 1
    assert text.index("int b;") < text.index("int a;") < text.index("int main_body;")
    assert '#line 1 "lib/b.h"' in text
    assert '#line 2 "lib/a.h"' in text        # back in a.h after its first include
    assert '#line 3 "main.c"' in text
    assert "#include <linux/bpf.h>" in text    # system headers stay for the compiler


def test_unknown_includes_and_missing_files_are_named():
    with pytest.raises(SourceError, match=re.escape("main.c:1: includes unknown file 'lib/x.h'")):
        bundle({"main.c": '#include "lib/x.h"\n'}, "main.c")
    with pytest.raises(SourceError, match="missing main program file"):
        bundle({}, "main.c")
    with pytest.raises(SourceError, match="missing map definitions"):
        abi_digest({"main.c": ""})


def test_the_layout_digest_follows_maps_h_only():
    base = abi_digest(SOURCES)
    assert len(base) == 12
    assert abi_digest({**SOURCES, "lib/a.h": "int other;\n"}) == base
    assert abi_digest({**SOURCES, "lib/maps.h": "struct m { long x; };\n"}) != base


def test_the_real_sources_bundle(tmp_path):
    from cni_cilium.datapath.loader import find_bpf_dir, read_sources

    sources = read_sources(find_bpf_dir())
    text = bundle(sources)
    for program in ("from_container", "to_container", "from_netdev", "to_netdev", "from_host"):
        assert f"int {program}(struct __sk_buff *skb)" in text
    assert '#include "' not in text
