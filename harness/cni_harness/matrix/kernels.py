"""Debian kernels for the qemu provider: find the mirror, fetch, unpack and cache.

The mirror is the Debian archive this host's apt already uses (one-line `sources.list` or
deb822 `.sources`); a kernel entry's suite (bullseye, bookworm-backports, sid, ...) is read
through a temporary sources list in the cache, so the host's own apt state is never changed.
The packages that make up a kernel (`linux-image-*`, and on newer suites `linux-binary-*` and
`linux-modules-*`) are resolved from the entry's meta package, downloaded once and unpacked
under the cache. The modules directory gets `build`/`source` links to this host's kernel
headers so bcc compiles inside the guest (networking programs use only stable UAPI).

Parsing is pure (`parse_sources_list`, `parse_deb822_sources`, `debian_mirror`,
`parse_control`, `kernel_closure`); `fetch_kernel` is the edge (apt-get, dpkg-deb, depmod).
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import json
import os
import re
import shutil
import subprocess
import time
from dataclasses import asdict, dataclass
from typing import Callable, Iterator, Sequence

# Not under /var/cache: virtme-ng puts a tmpfs over /var/cache (and /var/tmp, /var/log) in
# the guest, which would hide the modules the guest loads from this tree.
DEFAULT_CACHE = "/var/lib/cni-harness/kernels"
CACHE_ENV = "CNI_HARNESS_KERNEL_CACHE"
KERNEL_PACKAGE_RE = re.compile(r"^linux-(image|binary|modules)-")
APT_SOURCES_LIST = "/etc/apt/sources.list"
APT_SOURCES_DIR = "/etc/apt/sources.list.d"


class KernelFetchError(RuntimeError):
    """A kernel could not be found, downloaded or unpacked; the message says which step."""


def cache_root() -> str:
    """Where unpacked kernels live (env CNI_HARNESS_KERNEL_CACHE overrides)."""
    return os.environ.get(CACHE_ENV) or DEFAULT_CACHE


# --- apt sources (pure) -----------------------------------------------------------------------

@dataclass(frozen=True)
class AptSource:
    """One apt source: types (deb/deb-src), URIs, suites, components and its keyring."""

    types: tuple[str, ...]
    uris: tuple[str, ...]
    suites: tuple[str, ...]
    components: tuple[str, ...]
    signed_by: str = ""        # a keyring path; empty when absent or given inline


def parse_sources_list(text: str) -> list[AptSource]:
    """Parse the one-line format: `deb [opt=val ...] URI SUITE [COMPONENT...]`."""
    sources = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        options: dict[str, str] = {}
        match = re.match(r"^(\S+)\s+\[([^\]]*)\]\s+(.*)$", line)
        if match:
            kind, opts, rest = match.groups()
            for opt in opts.split():
                key, _, value = opt.partition("=")
                options[key.lower()] = value
        else:
            kind, _, rest = line.partition(" ")
        fields = rest.split()
        if kind not in ("deb", "deb-src") or len(fields) < 2:
            continue
        sources.append(AptSource((kind,), (fields[0],), (fields[1],), tuple(fields[2:]),
                                 options.get("signed-by", "")))
    return sources


def parse_deb822_sources(text: str) -> list[AptSource]:
    """Parse deb822 `.sources` stanzas (Types/URIs/Suites/Components/Signed-By/Enabled)."""
    sources = []
    for stanza in _deb822_stanzas(text):
        if stanza.get("enabled", "yes").strip().lower() == "no":
            continue
        signed_by = stanza.get("signed-by", "").strip()
        if "\n" in signed_by or "BEGIN PGP" in signed_by:
            signed_by = ""          # an inline key: apt's default keyrings are used instead
        sources.append(AptSource(
            tuple(stanza.get("types", "").split()), tuple(stanza.get("uris", "").split()),
            tuple(stanza.get("suites", "").split()), tuple(stanza.get("components", "").split()),
            signed_by))
    return sources


def _deb822_stanzas(text: str) -> Iterator[dict[str, str]]:
    stanza: dict[str, str] = {}
    key = ""
    for raw in [*text.splitlines(), ""]:
        if raw.startswith("#"):
            continue
        if not raw.strip():
            if stanza:
                yield stanza
            stanza, key = {}, ""
            continue
        if raw[0] in " \t" and key:
            stanza[key] += "\n" + raw.strip()
            continue
        name, _, value = raw.partition(":")
        key = name.strip().lower()
        stanza[key] = value.strip()


def debian_mirror(sources: Sequence[AptSource], codename: str) -> AptSource:
    """The source serving this host's Debian release itself (suite == its codename).

    Security, updates and third-party repositories never list the bare codename, so the
    first match is the Debian archive mirror. Raises KernelFetchError when there is none.
    """
    for source in sources:
        if "deb" in source.types and codename in source.suites and source.uris:
            return source
    raise KernelFetchError(
        f"no Debian archive for suite {codename!r} in apt's configuration "
        f"({APT_SOURCES_LIST}, {APT_SOURCES_DIR}/): the qemu provider fetches kernels from "
        "the Debian mirror apt already uses; pass --kernel PATH to boot your own image")


def read_apt_sources(root: str = "/") -> list[AptSource]:
    """Every source of this system's apt configuration, both formats."""
    sources: list[AptSource] = []
    main = os.path.join(root, APT_SOURCES_LIST.lstrip("/"))
    parts = os.path.join(root, APT_SOURCES_DIR.lstrip("/"))
    for path in [main, *sorted(glob.glob(os.path.join(parts, "*")))]:
        try:
            with open(path, encoding="utf-8") as fh:
                text = fh.read()
        except OSError:
            continue
        if path.endswith(".sources"):
            sources.extend(parse_deb822_sources(text))
        elif path == main or path.endswith(".list"):
            sources.extend(parse_sources_list(text))
    return sources


# --- package metadata (pure) ------------------------------------------------------------------

def parse_control(text: str) -> list[dict[str, str]]:
    """Paragraphs of `apt-cache show` / Packages output, keys lower-cased."""
    return list(_deb822_stanzas(text))


def parse_depends(value: str) -> list[list[tuple[str, str]]]:
    """`a (= 1), b | c (>= 2)` -> [[('a', '= 1')], [('b', ''), ('c', '>= 2')]]."""
    groups = []
    for group in value.replace("\n", " ").split(","):
        alts = []
        for alt in group.split("|"):
            match = re.match(r"^\s*([^\s(:]+)(?::\S+)?\s*(?:\(([^)]*)\))?", alt)
            if match:
                alts.append((match.group(1), " ".join((match.group(2) or "").split())))
        if alts:
            groups.append(alts)
    return groups


def kernel_dependencies(paragraph: dict[str, str]) -> list[str]:
    """The kernel packages a paragraph pins to its own version (`name (= version)`)."""
    version = paragraph.get("version", "")
    found = []
    for group in parse_depends(paragraph.get("depends", "")):
        for name, constraint in group:
            if KERNEL_PACKAGE_RE.match(name) and constraint == f"= {version}":
                found.append(name)
                break
    return found


def kernel_closure(show: Callable[[str, str], dict[str, str]], meta: str, version: str
                   ) -> list[str]:
    """Every kernel package reachable from the meta package at one version, in order.

    `show(name, version)` returns the package's control paragraph. The meta package itself
    is included (it is tiny and records the version the cache holds).
    """
    order: list[str] = []
    pending = [meta]
    while pending:
        name = pending.pop(0)
        if name in order:
            continue
        order.append(name)
        pending.extend(kernel_dependencies(show(name, version)))
    return order


# --- the unpacked kernel ----------------------------------------------------------------------

@dataclass(frozen=True)
class CachedKernel:
    """A kernel ready to boot: the image, its release and its modules tree."""

    entry: str
    suite: str
    version: str              # Debian package version, e.g. 6.1.176-1
    release: str              # uname -r of the booted kernel
    root: str                 # the unpacked packages
    image: str                # path of vmlinuz
    modules_dir: str          # .../lib/modules/<release>
    packages: tuple[str, ...]
    fetched_at: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


def find_image(root: str) -> tuple[str, str]:
    """(vmlinuz path, release) inside an unpacked kernel tree.

    Older packages ship `boot/vmlinuz-<release>`; merged-/usr ones (sid) ship
    `usr/lib/modules/<release>/vmlinuz`.
    """
    for image in sorted(glob.glob(os.path.join(root, "boot", "vmlinuz-*")), reverse=True):
        return image, os.path.basename(image)[len("vmlinuz-"):]
    for rel in ("usr/lib/modules", "lib/modules"):
        for image in sorted(glob.glob(os.path.join(root, rel, "*", "vmlinuz")), reverse=True):
            return image, os.path.basename(os.path.dirname(image))
    raise KernelFetchError(f"{root}: no boot/vmlinuz-* or lib/modules/*/vmlinuz in the "
                           "unpacked packages")


def modules_dir_of(root: str, release: str) -> str:
    for rel in ("lib/modules", "usr/lib/modules"):
        path = os.path.join(root, rel, release)
        if os.path.isdir(path):
            return path
    raise KernelFetchError(f"{root}: no lib/modules/{release} in the unpacked packages")


def host_headers() -> tuple[str, str]:
    """This host's kernel headers (build, source) that bcc compiles against."""
    base = f"/lib/modules/{os.uname().release}"
    build = os.path.realpath(os.path.join(base, "build"))
    if not os.path.exists(os.path.join(build, "Makefile")):
        raise KernelFetchError(f"{base}/build has no kernel headers: run scripts/setup.sh")
    source = os.path.realpath(os.path.join(base, "source"))
    return build, source if os.path.isdir(source) else build


def prepare_modules_dir(root: str, release: str, headers: tuple[str, str]) -> str:
    """depmod the unpacked modules and link build/source to the host's headers (idempotent).

    Packages ship `lib/modules/<release>` or, on merged-/usr suites, `usr/lib/modules`;
    virtme-ng finds either next to the image.
    """
    moddir = modules_dir_of(root, release)
    for name, target in zip(("build", "source"), headers):
        link = os.path.join(moddir, name)
        if os.path.islink(link) and os.readlink(link) == target:
            continue
        if os.path.lexists(link):
            os.remove(link)
        os.symlink(target, link)
    if not os.path.exists(os.path.join(moddir, "modules.dep")):
        base = os.path.dirname(os.path.dirname(os.path.dirname(moddir)))
        res = subprocess.run(["depmod", "-a", "-b", base, release], capture_output=True,
                             text=True, check=False)
        if res.returncode != 0:
            raise KernelFetchError(f"depmod for {release} failed: {res.stderr.strip()}")
    return moddir


# --- fetching (edge) --------------------------------------------------------------------------

@contextlib.contextmanager
def file_lock(path: str) -> Iterator[None]:
    """Hold an exclusive lock on `path` (created with its parents) for the block: one
    process at a time fills a cache entry."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


class AptView:
    """apt-get / apt-cache reading one suite through a private sources list and state."""

    def __init__(self, workdir: str, mirror: AptSource, suite: str):
        self.workdir = workdir
        for sub in ("lists/partial", "cache/archives/partial", "parts", "prefs.d"):
            os.makedirs(os.path.join(workdir, sub), exist_ok=True)
        signed = f" [signed-by={mirror.signed_by}]" if mirror.signed_by else ""
        with open(os.path.join(workdir, "sources.list"), "w", encoding="utf-8") as fh:
            fh.write(f"deb{signed} {mirror.uris[0]} {suite} main\n")
        self.options = [
            f"Dir::Etc::SourceList={workdir}/sources.list",
            f"Dir::Etc::SourceParts={workdir}/parts",
            f"Dir::Etc::Preferences={workdir}/preferences",
            f"Dir::Etc::PreferencesParts={workdir}/prefs.d",
            f"Dir::State::Lists={workdir}/lists",
            f"Dir::Cache={workdir}/cache",
            "Acquire::Languages=none",
            "APT::Sandbox::User=root",
        ]

    def _argv(self, tool: str, *args: str) -> list[str]:
        argv = [tool]
        for opt in self.options:
            argv += ["-o", opt]
        return [*argv, *args]

    def run(self, tool: str, *args: str, cwd: str | None = None, timeout: float = 900
            ) -> str:
        res = subprocess.run(self._argv(tool, *args), capture_output=True, text=True,
                             cwd=cwd, timeout=timeout, check=False)
        if res.returncode != 0:
            raise KernelFetchError(f"{tool} {' '.join(args)} failed: "
                                   f"{(res.stderr or res.stdout).strip()[-800:]}")
        return res.stdout

    def update(self) -> None:
        self.run("apt-get", "-q", "update")

    def show(self, name: str, version: str | None = None) -> dict[str, str]:
        spec = f"{name}={version}" if version else name
        paragraphs = parse_control(self.run("apt-cache", "show", "--no-all-versions", spec))
        if not paragraphs:
            raise KernelFetchError(f"apt-cache show {spec}: no such package")
        return paragraphs[0]

    def download(self, specs: Sequence[str], dest: str) -> None:
        self.run("apt-get", "-q", "download", *specs, cwd=dest)


def host_codename(os_release_path: str = "/etc/os-release") -> str:
    from cni_cilium.preflight import parse_os_release

    with open(os_release_path, encoding="utf-8") as fh:
        info = parse_os_release(fh.read())
    if info.get("ID") != "debian" or not info.get("VERSION_CODENAME"):
        raise KernelFetchError(
            f"this host is {info.get('PRETTY_NAME') or info.get('ID')}, not Debian: its apt "
            "has no Debian mirror to fetch the matrix kernels from; pass --kernel PATH")
    return info["VERSION_CODENAME"]


def load_cached(entry: str, cache: str | None = None) -> CachedKernel | None:
    """The cached kernel of an entry, if complete."""
    path = os.path.join(cache or cache_root(), entry, "kernel.json")
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
        kernel = CachedKernel(**{**data, "packages": tuple(data["packages"])})
    except (OSError, ValueError, TypeError, KeyError):
        return None
    if not (os.path.isfile(kernel.image) and os.path.isdir(kernel.modules_dir)):
        return None
    return kernel


def fetch_kernel(entry: str, suite: str, package: str, *, cache: str | None = None,
                 refresh: bool = False, progress: Callable[[str], None] = lambda _m: None
                 ) -> CachedKernel:
    """The kernel of a matrix entry, from the cache or downloaded from the Debian mirror."""
    cache = cache or cache_root()
    headers = host_headers()
    with file_lock(os.path.join(cache, f".{entry}.lock")):
        cached = None if refresh else load_cached(entry, cache)
        if cached is not None:
            prepare_modules_dir(cached.root, cached.release, headers)
            progress(f"kernel {cached.release} from cache {cached.root}")
            return cached
        mirror = debian_mirror(read_apt_sources(), host_codename())
        progress(f"resolving {package} in {suite} from {mirror.uris[0]}")
        apt = AptView(os.path.join(cache, "apt", suite), mirror, suite)
        apt.update()
        meta = apt.show(package)
        version = meta["version"]
        names = kernel_closure(apt.show, package, version)
        entry_dir = os.path.join(cache, entry)
        debs = os.path.join(entry_dir, "debs")
        shutil.rmtree(debs, ignore_errors=True)
        os.makedirs(debs)
        progress(f"downloading {', '.join(names)} ({version})")
        apt.download([f"{n}={version}" for n in names], debs)
        staging = os.path.join(entry_dir, "root.new")
        shutil.rmtree(staging, ignore_errors=True)
        os.makedirs(staging)
        for deb in sorted(glob.glob(os.path.join(debs, "*.deb"))):
            res = subprocess.run(["dpkg-deb", "-x", deb, staging], capture_output=True,
                                 text=True, check=False)
            if res.returncode != 0:
                raise KernelFetchError(f"dpkg-deb -x {deb}: {res.stderr.strip()}")
        image, release = find_image(staging)
        prepare_modules_dir(staging, release, headers)
        root = os.path.join(entry_dir, "root")
        shutil.rmtree(root, ignore_errors=True)
        os.rename(staging, root)
        shutil.rmtree(debs, ignore_errors=True)
        kernel = CachedKernel(entry=entry, suite=suite, version=version, release=release,
                              root=root, image=os.path.join(root, os.path.relpath(image, staging)),
                              modules_dir=modules_dir_of(root, release), packages=tuple(names),
                              fetched_at=time.time())
        with open(os.path.join(entry_dir, "kernel.json"), "w", encoding="utf-8") as fh:
            json.dump(kernel.to_dict(), fh, indent=2)
        progress(f"kernel {release} cached in {root}")
        return kernel
