"""Kernel fetching for the qemu provider: apt sources, package metadata, the unpacked tree."""

from __future__ import annotations

import os

import pytest

from cni_harness.matrix.kernels import (
    AptSource,
    KernelFetchError,
    debian_mirror,
    find_image,
    kernel_closure,
    kernel_dependencies,
    parse_control,
    parse_deb822_sources,
    parse_depends,
    parse_sources_list,
    prepare_modules_dir,
    read_apt_sources,
)

pytestmark = pytest.mark.unit

DEB822 = """\
Types: deb
# a snapshot comment
URIs: http://mirror.example/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://mirror.example/debian-security
Suites: bookworm-security
Components: main

Types: deb
URIs: http://disabled.example/debian
Suites: bookworm
Enabled: no

Types: deb
URIs: https://inline.example/repo
Suites: stable
Signed-By:
 -----BEGIN PGP PUBLIC KEY BLOCK-----
 .
 abc
 -----END PGP PUBLIC KEY BLOCK-----
"""

ONE_LINE = """\
# comment
deb [arch=amd64 signed-by=/etc/apt/keyrings/x.gpg] http://one.example/debian bookworm main contrib
deb-src http://one.example/debian bookworm main
deb https://packages.example/apt cloud-sdk-bookworm main   # trailing comment
"""


def test_deb822_stanzas_types_keyrings_and_disabled_entries():
    sources = parse_deb822_sources(DEB822)
    assert [s.uris[0] for s in sources] == [
        "http://mirror.example/debian", "http://mirror.example/debian-security",
        "https://inline.example/repo"]
    assert sources[0].suites == ("bookworm", "bookworm-updates")
    assert sources[0].signed_by == "/usr/share/keyrings/debian-archive-keyring.gpg"
    assert sources[2].signed_by == ""          # inline key: apt's default keyrings


def test_one_line_format_with_options_and_comments():
    sources = parse_sources_list(ONE_LINE)
    assert sources[0] == AptSource(("deb",), ("http://one.example/debian",), ("bookworm",),
                                   ("main", "contrib"), "/etc/apt/keyrings/x.gpg")
    assert sources[1].types == ("deb-src",)
    assert sources[2].suites == ("cloud-sdk-bookworm",)


def test_mirror_is_the_source_of_the_bare_codename():
    sources = parse_sources_list(ONE_LINE)[2:] + parse_deb822_sources(DEB822)
    mirror = debian_mirror(sources, "bookworm")
    assert mirror.uris == ("http://mirror.example/debian",)
    # deb-src alone, security and third-party suites never qualify
    with pytest.raises(KernelFetchError, match="no Debian archive for suite 'trixie'"):
        debian_mirror(sources, "trixie")
    with pytest.raises(KernelFetchError, match="--kernel PATH"):
        debian_mirror(parse_sources_list(ONE_LINE)[1:2], "bookworm")


def test_reads_both_formats_from_an_apt_tree(tmp_path):
    (tmp_path / "etc/apt/sources.list.d").mkdir(parents=True)
    (tmp_path / "etc/apt/sources.list").write_text(ONE_LINE)
    (tmp_path / "etc/apt/sources.list.d/debian.sources").write_text(DEB822)
    (tmp_path / "etc/apt/sources.list.d/ignored.save").write_text(ONE_LINE)
    uris = [s.uris[0] for s in read_apt_sources(str(tmp_path))]
    assert uris.count("http://one.example/debian") == 2
    assert "http://mirror.example/debian" in uris


def test_depends_parsing_keeps_alternatives_and_constraints():
    value = ("dracut | initramfs-tools (>= 0.120+deb8u2) | linux-initramfs-tool, "
             "linux-base-7.2.13+deb14-amd64 (= 7.2.13-1),\n linux-binary-7.2.13+deb14-amd64 "
             "(= 7.2.13-1), libc6:any")
    assert parse_depends(value) == [
        [("dracut", ""), ("initramfs-tools", ">= 0.120+deb8u2"), ("linux-initramfs-tool", "")],
        [("linux-base-7.2.13+deb14-amd64", "= 7.2.13-1")],
        [("linux-binary-7.2.13+deb14-amd64", "= 7.2.13-1")],
        [("libc6", "")],
    ]


PACKAGES = {
    "linux-image-amd64": {"version": "7.2.13-1", "depends":
                          "linux-base-amd64 (= 7.2.13-1), linux-image-7.2.13+deb14-amd64 "
                          "(= 7.2.13-1)"},
    "linux-image-7.2.13+deb14-amd64": {"version": "7.2.13-1", "depends":
                                       "dracut | initramfs-tools, linux-binary-7.2.13+deb14-"
                                       "amd64 (= 7.2.13-1), linux-modules-7.2.13+deb14-amd64 "
                                       "(= 7.2.13-1), linux-modules-extra (>= 7)"},
    "linux-binary-7.2.13+deb14-amd64": {"version": "7.2.13-1", "depends": ""},
    "linux-modules-7.2.13+deb14-amd64": {"version": "7.2.13-1",
                                         "depends": "linux-binary-7.2.13+deb14-amd64 "
                                                    "(= 7.2.13-1)"},
}


def test_closure_follows_version_pinned_kernel_packages_only():
    def show(name, version):
        assert version == "7.2.13-1"
        return PACKAGES[name]

    assert kernel_closure(show, "linux-image-amd64", "7.2.13-1") == [
        "linux-image-amd64", "linux-image-7.2.13+deb14-amd64",
        "linux-binary-7.2.13+deb14-amd64", "linux-modules-7.2.13+deb14-amd64"]
    # bullseye/bookworm: the meta package pins the image, which has everything
    assert kernel_dependencies({"version": "5.10.223-1", "depends":
                                "linux-image-5.10.0-32-amd64 (= 5.10.223-1)"}) == [
        "linux-image-5.10.0-32-amd64"]


def test_control_paragraphs():
    text = "Package: a\nVersion: 1\nDepends: b (= 1),\n c\n\nPackage: b\nVersion: 1\n"
    assert parse_control(text) == [{"package": "a", "version": "1", "depends": "b (= 1),\nc"},
                                   {"package": "b", "version": "1"}]


def _tree(root, files):
    for rel in files:
        path = os.path.join(root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w", encoding="utf-8") as fh:
            fh.write("x")


def test_image_in_boot_or_in_the_modules_dir(tmp_path):
    old = tmp_path / "old"
    _tree(old, ["boot/vmlinuz-5.10.0-32-amd64", "lib/modules/5.10.0-32-amd64/modules.order"])
    assert find_image(str(old)) == (str(old / "boot/vmlinuz-5.10.0-32-amd64"),
                                    "5.10.0-32-amd64")
    merged = tmp_path / "merged"
    _tree(merged, ["usr/lib/modules/7.2.13+deb14-amd64/vmlinuz"])
    assert find_image(str(merged)) == (
        str(merged / "usr/lib/modules/7.2.13+deb14-amd64/vmlinuz"), "7.2.13+deb14-amd64")
    with pytest.raises(KernelFetchError, match="no boot/vmlinuz"):
        find_image(str(tmp_path / "empty"))


def test_modules_dir_gets_header_links_idempotently(tmp_path):
    _tree(tmp_path, ["usr/lib/modules/7.2.13+deb14-amd64/modules.dep"])
    headers = (str(tmp_path / "hdr-build"), str(tmp_path / "hdr-common"))
    moddir = prepare_modules_dir(str(tmp_path), "7.2.13+deb14-amd64", headers)
    assert moddir == str(tmp_path / "usr/lib/modules/7.2.13+deb14-amd64")
    assert os.readlink(os.path.join(moddir, "build")) == headers[0]
    assert os.readlink(os.path.join(moddir, "source")) == headers[1]
    new_headers = (headers[1], headers[1])
    prepare_modules_dir(str(tmp_path), "7.2.13+deb14-amd64", new_headers)
    assert os.readlink(os.path.join(moddir, "build")) == headers[1]
