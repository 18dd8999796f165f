"""Preflight rules: may this module run on a host with this OS, kernel and settings?

`evaluate()` is a pure function of (os-release, kernel release, settings), so the verdict
for every matrix entry can be computed and tested without that machine. Live probes of the
running kernel live in `cni_cilium.probes` and only add checks to the list.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import asdict, dataclass

from .config import Settings

MIN_KERNEL = (5, 8)
MIN_KERNEL_EXTRA_LB = (5, 15)

PASS, FAIL, WARN, SKIP = "pass", "fail", "warn", "skip"


@dataclass(frozen=True)
class Check:
    """One preflight check: `fail` makes the host unsupported, `warn` does not."""

    name: str
    status: str
    message: str
    remedy: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Verdict:
    """The outcome of all checks."""

    checks: tuple[Check, ...]

    @property
    def supported(self) -> bool:
        return all(c.status != FAIL for c in self.checks)

    def to_dict(self) -> dict:
        return {"supported": self.supported, "checks": [c.to_dict() for c in self.checks]}


def parse_os_release(text: str) -> dict[str, str]:
    """Parse /etc/os-release (shell-style KEY=value lines)."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        try:
            parts = shlex.split(value)
        except ValueError:
            parts = [value.strip("\"'")]
        out[key.strip()] = parts[0] if parts else ""
    return out


def kernel_version(release: str) -> tuple[int, int, int]:
    """(major, minor, patch) of a kernel release such as '5.15.0-91-generic'."""
    match = re.match(r"^(\d+)\.(\d+)(?:\.(\d+))?", release.strip())
    if not match:
        raise ValueError(f"kernel release {release!r} does not start with a version number")
    major, minor, patch = match.groups()
    return int(major), int(minor), int(patch or 0)


def _fmt_version(v: tuple[int, ...]) -> str:
    return ".".join(str(x) for x in v)


def _os_checks(os_release: dict[str, str], release: str, version: tuple[int, int, int]
               ) -> list[Check]:
    os_id = os_release.get("ID", "").lower()
    version_id = os_release.get("VERSION_ID", "")
    pretty = os_release.get("PRETTY_NAME") or f"{os_id} {version_id}".strip() or "unknown OS"
    major_minor = version[:2]

    if os_id == "ubuntu":
        if version_id == "18.04" or (version_id and version_id < "20.04"):
            return [Check("os", FAIL, f"{pretty} is not supported by cni-cilium",
                          "upgrade the host to Ubuntu 22.04 or 24.04")]
        if version_id == "20.04":
            if major_minor < MIN_KERNEL:
                return [Check(
                    "os", FAIL,
                    f"{pretty} needs the HWE kernel; the running kernel {release} is the stock one",
                    "apt-get install --install-recommends linux-generic-hwe-20.04 && reboot")]
            return [Check("os", PASS, f"{pretty} with HWE kernel {release}")]
        if version_id in ("22.04", "24.04"):
            return [Check("os", PASS, f"{pretty} is supported")]
        return [Check("os", WARN, f"{pretty} is not in the tested OS list")]

    if os_id == "centos":
        major = version_id.split(".")[0]
        if major in ("7", "8"):
            if "elrepo" not in release:
                el = f"el{major}"
                return [Check(
                    "os", FAIL,
                    f"{pretty} needs a kernel from ELRepo; the running kernel {release} is stock",
                    f"yum install https://www.elrepo.org/elrepo-release-{major}.{el}.elrepo.noarch.rpm"
                    f" && yum --enablerepo=elrepo-kernel install kernel-ml kernel-ml-devel"
                    f" && grub2-set-default 0 && reboot")]
            return [Check("os", PASS, f"{pretty} with ELRepo kernel {release}")]
        return [Check("os", WARN, f"{pretty} is not in the tested OS list")]

    if os_id == "debian":
        if version_id in ("11", "12"):
            return [Check("os", PASS, f"{pretty} is supported")]
        return [Check("os", WARN, f"{pretty} is not in the tested OS list")]

    return [Check("os", WARN, f"{pretty} is not in the tested OS list")]


def extra_lb_refusal(settings: Settings, kernel_release: str) -> str | None:
    """Why these settings cannot run on this kernel (the extra LB algorithms need 5.15),
    or None. Preflight fails on it; the agent refuses such a config (at start: it does not
    start; later: it keeps the running one)."""
    if not settings.extraLoadBalancerAlgorithmsEnabled:
        return None
    try:
        version = kernel_version(kernel_release)
    except ValueError:
        return None      # judged (and refused) by the kernel check itself
    if version[:2] >= MIN_KERNEL_EXTRA_LB:
        return None
    return (f"extraLoadBalancerAlgorithmsEnabled needs kernel >= "
            f"{_fmt_version(MIN_KERNEL_EXTRA_LB)}; running {kernel_release}")


def evaluate(os_release: dict[str, str], kernel_release: str, settings: Settings) -> Verdict:
    """The rule-based verdict for a host; no access to the running system."""
    try:
        version = kernel_version(kernel_release)
    except ValueError as exc:
        return Verdict((Check("kernel", FAIL, str(exc), "pass the output of `uname -r`"),))

    checks = _os_checks(os_release, kernel_release, version)
    if version[:2] < MIN_KERNEL:
        checks.append(Check(
            "kernel", FAIL,
            f"kernel {kernel_release} is older than {_fmt_version(MIN_KERNEL)}",
            f"install a kernel >= {_fmt_version(MIN_KERNEL)} from the distribution and reboot"))
    else:
        checks.append(Check("kernel", PASS,
                            f"kernel {kernel_release} >= {_fmt_version(MIN_KERNEL)}"))

    if settings.extraLoadBalancerAlgorithmsEnabled:
        refusal = extra_lb_refusal(settings, kernel_release)
        if refusal:
            checks.append(Check(
                "extra-lb-algorithms", FAIL, refusal,
                f"install a kernel >= {_fmt_version(MIN_KERNEL_EXTRA_LB)} or set "
                "extraLoadBalancerAlgorithmsEnabled: false"))
        else:
            checks.append(Check("extra-lb-algorithms", PASS,
                                f"kernel {kernel_release} supports the extra LB algorithms"))
    for warning in settings.warnings:
        checks.append(Check("config", WARN, warning))
    return Verdict(tuple(checks))
