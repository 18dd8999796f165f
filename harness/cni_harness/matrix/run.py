"""`cni-harness matrix run` and `repro`: suites over matrix entries, judged against matrix.yaml.

For every selected entry a *target* (qemu, local, or any `Provider` such as vagrant) runs
the entry job (`cni_harness.matrix.entryjob`) where the entry's kernel runs and leaves its files in
`OUT/<entry>/`. The host then reads them and judges each entry x column:

- `preflight:<profile>`: live preflight with that profile's settings against the matrix's
  expected verdict. Refused where the matrix expects `unsupported` is the success
  `expected-unsupported`; accepted there is a failure, and so is refused where `supported`
  is expected.
- `<suite>`: the suite's cases. Suites do not run on an entry whose default profile was
  refused; that is `expected-unsupported` when the matrix expects it, else a failure.

Pure: `judge_preflight`, `judge_entry`, `expectations_for`, `exit_status`. Edge: targets,
`collect`, `run_matrix`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

from .. import PROJECT_ROOT
from ..providers.base import EXIT_PROVIDER_UNAVAILABLE, Availability, ProviderUnavailable
from ..providers.registry import Selection
from ..report.report import (
    EXPECTED,
    FAIL,
    PASS,
    Case,
    Cell,
    MatrixReport,
    MatrixRow,
    SuiteResult,
    merge_junit,
    render_matrix_html,
    render_matrix_markdown,
)
from ..suites.runner import read_suite_result
from ..timescale import ENV as TIME_SCALE_ENV
from .entryjob import JobSpec, clear_outputs, run_preflights
from .matrix import KernelEntry, Matrix, OsEntry

EXIT_OK, EXIT_UNEXPECTED, EXIT_USAGE = 0, 1, 2
PREFLIGHT = "preflight"
ENTRY_MODULE = "cni_harness.matrix.entryjob"    # `python -m` it, in the guest or here
Progress = Callable[[str], None]


class MatrixUsageError(ValueError):
    """Bad selection of entries, suites or provider; the message says what is allowed."""


# --- entries ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Entry:
    """One thing the matrix runs: a kernel entry, an OS entry, or a user's kernel image."""

    name: str
    expect: dict[str, str]              # profile -> supported/unsupported; {} = by the rules
    kernel: KernelEntry | None = None
    os_entry: OsEntry | None = None
    image: str | None = None            # a user's kernel image (qemu --kernel PATH)
    index: int = 0                      # position among the provider's entries

    @property
    def custom(self) -> bool:
        return self.image is not None


def custom_kernel_entry(image: str) -> Entry:
    """A user's own kernel image; its expectations follow from the rules once it reports
    its release."""
    base = os.path.basename(image.rstrip("/")) or "kernel"
    name = "custom-" + "".join(c if c.isalnum() or c in ".-" else "-" for c in base).lower()
    return Entry(name=name, expect={}, image=os.path.abspath(image))


def select(entries: Sequence[Entry], wanted: Sequence[str]) -> list[Entry]:
    """Entries by name (or kernel version), in the order asked; all when none asked."""
    if not wanted:
        return list(entries)
    chosen = []
    for want in wanted:
        match = [e for e in entries if want in (e.name, e.kernel.version if e.kernel else None)]
        if not match:
            known = ", ".join(e.name for e in entries)
            raise MatrixUsageError(f"no entry {want!r} for this provider; known: {known}")
        if match[0] not in chosen:
            chosen.append(match[0])
    return chosen


# --- judging (pure) ---------------------------------------------------------------------------

def refusal_reason(report: dict) -> str:
    failed = [f"{c.get('name')}: {c.get('message')}" for c in report.get("checks", [])
              if c.get("status") == "fail"]
    return "; ".join(failed) or "refused"


def judge_preflight(expected: str, report: dict | None) -> Cell:
    """A preflight verdict against the matrix's expectation."""
    if report is None:
        return Cell(FAIL, "preflight did not run or printed no JSON")
    supported = bool(report.get("supported"))
    if expected == "supported":
        return Cell(PASS, "supported") if supported else \
            Cell(FAIL, f"refused, but the matrix expects supported: {refusal_reason(report)}")
    if supported:
        return Cell(FAIL, "accepted, but the matrix expects unsupported")
    return Cell(EXPECTED, f"refused as expected: {refusal_reason(report)}")


def expectations_for(entry: Entry, profiles: dict[str, dict], os_release: dict[str, str],
                     kernel_release: str) -> dict[str, str]:
    """The entry's expected verdicts; a custom kernel is judged by the preflight rules on the
    release it reported (what the matrix would say about that kernel)."""
    if entry.expect:
        return {p: entry.expect[p] for p in profiles if p in entry.expect}
    from cni_cilium.config import settings_from_mapping
    from cni_cilium.preflight import evaluate

    return {p: "supported" if evaluate(os_release, kernel_release,
                                       settings_from_mapping(s)).supported else "unsupported"
            for p, s in profiles.items()}


@dataclass
class Observation:
    """What an entry's job left behind (read by `collect`)."""

    facts: dict = field(default_factory=dict)
    preflight: dict[str, dict | None] = field(default_factory=dict)
    suites: dict[str, SuiteResult] = field(default_factory=dict)
    suites_skipped: str = ""
    error: str = ""


def suite_cell(result: SuiteResult) -> Cell:
    """A suite's cell: its status, the case counts when not all alike, and the reason."""
    outcome = result.outcome()
    return Cell(outcome.status, outcome.detail())


def judge_entry(expect: dict[str, str], profiles: Sequence[str], suites: Sequence[str],
                obs: Observation) -> dict[str, Cell]:
    """Every column of one entry's row."""
    cells: dict[str, Cell] = {}
    for profile in profiles:
        column = f"{PREFLIGHT}:{profile}"
        if obs.error and not obs.preflight:
            cells[column] = Cell(FAIL, obs.error)
        elif profile not in expect:
            cells[column] = Cell(FAIL, f"the matrix has no expectation for profile {profile}")
        else:
            cells[column] = judge_preflight(expect[profile], obs.preflight.get(profile))
    default_refused = obs.preflight.get("default") is not None and \
        not obs.preflight["default"].get("supported")
    for suite in suites:
        if suite in obs.suites:
            cells[suite] = suite_cell(obs.suites[suite])
        elif obs.error:
            cells[suite] = Cell(FAIL, obs.error)
        elif default_refused and expect.get("default") == "unsupported":
            cells[suite] = Cell(EXPECTED, "not run: preflight refused this entry as expected")
        elif default_refused:
            cells[suite] = Cell(FAIL, "not run: preflight refused this entry, but the matrix "
                                      "expects it supported")
        else:
            cells[suite] = Cell(FAIL, obs.suites_skipped or "did not run")
    return cells


def exit_status(report: MatrixReport) -> int:
    """0 when every cell is as the matrix expects, 1 otherwise."""
    return EXIT_UNEXPECTED if report.unexpected else EXIT_OK


def synthetic_cases(entry: str, cells: dict[str, Cell], suites: Sequence[str],
                    obs: Observation) -> list[Case]:
    """JUnit cases for what the harness judged itself: preflight columns, and suites that
    have no JUnit of their own (not run, boot failed)."""
    cases = []
    for column, cell in cells.items():
        if column.startswith(f"{PREFLIGHT}:"):
            cases.append(Case(suite=f"{entry}/{PREFLIGHT}", classname=f"{entry}.{PREFLIGHT}",
                              name=column.split(":", 1)[1], status=cell.status,
                              reason=cell.reason))
        elif column in suites and column not in obs.suites:
            cases.append(Case(suite=f"{entry}/{column}", classname=f"{entry}.{column}",
                              name="suite", status=cell.status, reason=cell.reason))
    return cases


# --- reading an entry's files (edge) ----------------------------------------------------------

def _read_json(path: str):
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return None


def collect(entry_dir: str, profiles: Sequence[str], suites: Sequence[str],
            error: str = "") -> Observation:
    """Read what an entry job wrote."""
    obs = Observation(error=error)
    obs.facts = _read_json(os.path.join(entry_dir, "guest.json")) or {}
    for profile in profiles:
        obs.preflight[profile] = _read_json(os.path.join(entry_dir, PREFLIGHT,
                                                         f"{profile}.json"))
    if not any(obs.preflight.values()):
        obs.preflight = {}
    for name in suites:      # each finished suite, also when the entry was cut short
        result = read_suite_result(os.path.join(entry_dir, "suites"), name)
        if result is not None:
            obs.suites[name] = result
    job = _read_json(os.path.join(entry_dir, "job.json")) or {}
    obs.suites_skipped = job.get("suitesSkipped", "")
    if not obs.error and os.path.exists(os.path.join(entry_dir, "job-error.txt")):
        with open(os.path.join(entry_dir, "job-error.txt"), encoding="utf-8") as fh:
            obs.error = f"entry job failed: {fh.readline().strip()}"
    return obs


# --- targets (edge) ---------------------------------------------------------------------------

@dataclass
class RunPlan:
    """What to run on every entry."""

    suites: list[str]
    profiles: dict[str, dict]
    out: str
    k: str | None = None
    timeout: float = 3600.0
    shell: bool = False
    refresh_kernels: bool = False


@dataclass
class EntryRun:
    """How running one entry went, seen from the host."""

    error: str = ""
    seconds: float = 0.0
    facts: dict[str, str] = field(default_factory=dict)


def _headers() -> list[str]:
    from .kernels import host_headers

    return list(host_headers())


def entry_time_scale(accel: str, environ: Mapping[str, str] | None = None) -> float:
    """The waits' stretch factor for an entry job: the user's CNI_HARNESS_TIME_SCALE when
    set, else TCG_SCALE for an emulated (TCG) guest, else 1."""
    from ..timescale import ENV, TCG_SCALE, time_scale

    environ = os.environ if environ is None else environ
    if environ.get(ENV, "").strip():
        return time_scale(environ)
    return TCG_SCALE if accel == "tcg" else 1.0


def _write_spec(entry: Entry, plan: RunPlan, entry_dir: str, *, guest: bool, accel: str
                ) -> str:
    spec = JobSpec(entry=entry.name, out=entry_dir, suites=list(plan.suites),
                   profiles=plan.profiles, k=plan.k, guest=guest, accel=accel,
                   headers=_headers(), time_scale=entry_time_scale(accel))
    path = os.path.join(entry_dir, "job-spec.json")
    spec.save(path)
    return path


class Target:
    """Runs the entry job for the entries of one provider."""

    name = "abstract"

    def availability(self) -> Availability:
        raise NotImplementedError

    def entries(self, matrix: Matrix) -> list[Entry]:
        raise NotImplementedError

    def run_entry(self, entry: Entry, plan: RunPlan, entry_dir: str, progress: Progress
                  ) -> EntryRun:
        raise NotImplementedError


def _kernel_entries(matrix: Matrix, host: bool) -> list[Entry]:
    return [Entry(name=e.name, expect=dict(e.expect), kernel=e, index=i)
            for i, e in enumerate(matrix.kernel_entries) if (e.suite == "host") == host]


class QemuTarget(Target):
    """Each kernel entry boots in a virtme-ng guest over this host's root filesystem."""

    name = "qemu"

    def availability(self) -> Availability:
        from ..providers.qemu import provider as qemu

        return qemu.availability()

    def entries(self, matrix: Matrix) -> list[Entry]:
        return _kernel_entries(matrix, host=False)

    def run_entry(self, entry: Entry, plan: RunPlan, entry_dir: str, progress: Progress
                  ) -> EntryRun:
        from ..providers.qemu import provider as qemu
        from .kernels import KernelFetchError, fetch_kernel

        facts: dict[str, str] = {}
        if entry.image:
            image = entry.image
            facts["image"] = image
        else:
            assert entry.kernel is not None
            try:
                kernel = fetch_kernel(entry.name, entry.kernel.suite, entry.kernel.package,
                                      refresh=plan.refresh_kernels, progress=progress)
            except (KernelFetchError, OSError, subprocess.SubprocessError) as exc:
                return EntryRun(error=f"kernel fetch failed: {exc}")
            image = kernel.image
            facts["package"] = f"{entry.kernel.package} {kernel.version}"
        kvm, why = qemu.kvm_usable()
        accel = "kvm" if kvm else "tcg"
        progress(f"booting {os.path.basename(image)} with {accel} ({why})")
        spec_path = _write_spec(entry, plan, entry_dir, guest=True, accel=accel)
        command = qemu.guest_command(
            [sys.executable, "-m", ENTRY_MODULE, spec_path],
            {"PATH": os.pathsep.join([os.path.dirname(sys.executable), qemu.GUEST_PATH]),
             "PYTHONDONTWRITEBYTECODE": "1", "HOME": "/root"})
        guest = qemu.GuestSpec(image=image, command=command, job_dir=entry_dir, kvm=kvm,
                               interactive=plan.shell)
        result = qemu.boot(guest, timeout=plan.timeout, progress=progress)
        if result.guest_rc is None:
            if result.timed_out:
                why = f"guest timed out after {plan.timeout:.0f} s"
            else:
                why = f"guest did not finish its job (vng exit {result.vng_rc})"
            last = " | ".join(line for line in result.console_tail[-3:] if line)
            return EntryRun(error=f"{why}; console: {last}", seconds=result.seconds,
                            facts=facts)
        return EntryRun(seconds=result.seconds, facts=facts)


class LocalTarget(Target):
    """The running kernel itself (matrix entry `host`): the entry job runs right here."""

    name = "local"

    def availability(self) -> Availability:
        missing = [] if os.geteuid() == 0 else ["root (network namespaces, bpffs, tc)"]
        return Availability(not missing, tuple(missing))

    def entries(self, matrix: Matrix) -> list[Entry]:
        return _kernel_entries(matrix, host=True)

    def run_entry(self, entry: Entry, plan: RunPlan, entry_dir: str, progress: Progress
                  ) -> EntryRun:
        spec_path = _write_spec(entry, plan, entry_dir, guest=False, accel="none (host)")
        started = time.monotonic()
        with open(os.path.join(entry_dir, "console.log"), "w", encoding="utf-8") as log:
            proc = subprocess.Popen([sys.executable, "-m", ENTRY_MODULE, spec_path],
                                    stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True, errors="replace")
            assert proc.stdout is not None
            for line in proc.stdout:
                log.write(line)
                progress(line.rstrip())
            rc = proc.wait()
        seconds = time.monotonic() - started
        return EntryRun(error="" if rc == 0 else f"entry job exited {rc}", seconds=seconds)


NODE_FACTS_SCRIPT = "uname -r && cat /etc/os-release"


def parse_node_facts(text: str) -> dict[str, str]:
    """`uname -r && cat /etc/os-release` output -> kernel, os (PRETTY_NAME) and the raw
    os-release text (pure)."""
    from cni_cilium.preflight import parse_os_release

    kernel, _, os_release = text.strip().partition("\n")
    return {"kernel": kernel.strip(), "os": parse_os_release(os_release).get("PRETTY_NAME", ""),
            "osRelease": os_release}


def format_node_facts(facts: Mapping[str, Mapping[str, str]]) -> str:
    """`node1: Debian GNU/Linux 12 (bookworm), 6.1.0-25-amd64; node2: ...` (pure)."""
    return "; ".join(f"{name}: {f.get('os') or '?'}, {f.get('kernel') or '?'}"
                     for name, f in facts.items())


def read_node_facts(provider) -> dict[str, dict[str, str]]:
    """Each node's kernel and OS as that node reports them (through `Provider.exec`)."""
    return {info.name: parse_node_facts(provider.exec(info.name, ["sh", "-c",
                                                                  NODE_FACTS_SCRIPT]).stdout)
            for info in provider.nodes()}


class ProviderTarget(Target):
    """Any cluster `Provider` (vm, vagrant, kind, ...), one code path for all. The provider
    builds the entry's nodes and `playbooks/site.yml` deploys them: its preflight role
    (live probes) stops an unsupported entry before any change, its kernel role installs
    the entry's kernel (HWE, ELRepo) and reboots into it. Then every node reports its OS
    (PRETTY_NAME) and kernel (`uname -r`) through `Provider.exec` (the report names them);
    the first node's are judged by preflight's rules per profile, and the suites run here
    with `CNI_HARNESS_PROVIDER`, `CNI_HARNESS_CLUSTER`, `CNI_HARNESS_INVENTORY` and
    `CNI_HARNESS_MATRIX_ENTRY` set, so they use these nodes and no others. A failed deploy
    is an entry error unless preflight refuses the default profile (the deploy stopped as
    it should). The provider is taken down whatever happens."""

    def __init__(self, name: str, load: Callable[[], tuple[type, Callable[[Entry], object]]],
                 entries: Callable[[Matrix], list[Entry]],
                 cluster_for: Callable[[Entry], str] = lambda entry: entry.name):
        self.name = name
        self._load = load
        self._entries = entries
        self.cluster_for = cluster_for
        self._checked: Availability | None = None     # describe's, once per target

    def availability(self) -> Availability:
        try:
            cls, _factory = self._load()
        except ProviderUnavailable as exc:
            return Availability(False, (str(exc),))
        except ImportError as exc:
            return Availability(False, (f"the {self.name} provider is not part of this build "
                                        f"({exc})",))
        return cls.availability()

    def entries(self, matrix: Matrix) -> list[Entry]:
        return self._entries(matrix)

    def _provider(self, entry: Entry):
        """The entry's provider object, or None when its code is not in this build."""
        try:
            _cls, factory = self._load()
        except (ImportError, ProviderUnavailable):
            return None
        return factory(entry)

    def describe(self, entry: Entry, suites: Sequence[str]) -> dict:
        """What running this entry would do, without doing it (`matrix run --dry-run`):
        the suites, the cluster, the inventory and the nodes they would run against."""
        if self._checked is None:      # one host check for every entry described
            self._checked = self.availability()
        available = self._checked
        runs_suites = entry.expect.get("default", "supported") == "supported"
        provider = self._provider(entry)
        desc: dict = {
            "entry": entry.name, "provider": self.name, "available": available.ok,
            "availability": available.reason(), "cluster": self.cluster_for(entry),
            "suites": list(suites) if runs_suites else [],
            "suitesSkipped": "" if runs_suites else "preflight refuses this entry: the "
                             "deploy stops before any change and no suite runs",
            "steps": [f"{self.name}: up", "deploy playbooks/site.yml",
                      "read each node's /etc/os-release and uname -r", "suites",
                      f"{self.name}: down"],
        }
        if provider is None:
            count = entry.os_entry.nodes if entry.os_entry else 3
            desc["inventory"] = f"(written by the {self.name} provider's up)"
            desc["nodes"] = [{"name": f"node{i}", "ip": "?"} for i in range(1, count + 1)]
        else:
            desc["cluster"] = getattr(provider, "cluster", None) or desc["cluster"]
            desc["inventory"] = (getattr(provider, "inventory_file", None)
                                 or provider.inventory_path())
            desc["nodes"] = [{"name": n.name, "ip": n.ip} for n in provider.nodes()]
        desc["env"] = self.selection(entry, desc["cluster"], desc["inventory"]).env()
        return desc

    def selection(self, entry: Entry, cluster: str, inventory: str,
                  provider: str | None = None) -> Selection:
        """The provider choice the suites of an entry get through their environment
        (`provider`: the provider object's own name when it differs from the target's)."""
        return Selection(provider or self.name, cluster, inventory, entry.name)

    def run_entry(self, entry: Entry, plan: RunPlan, entry_dir: str, progress: Progress
                  ) -> EntryRun:
        from ..deploy.playbook import run_playbook
        from ..suites.runner import run_suites

        _cls, factory = self._load()
        provider = factory(entry)
        started = time.monotonic()
        cluster = getattr(provider, "cluster", None) or self.cluster_for(entry)
        # Named in the report from the start: whoever checks afterwards that the entry's
        # nodes are gone (CI's VM smoke) learns which ones, also when the entry failed.
        facts: dict[str, str] = {"cluster": cluster}
        if hasattr(provider, "time_scale"):
            # Emulated VMs (TCG): Ansible's and the suites' waits stretch by the provider's
            # factor unless the user gave one.
            os.environ.setdefault(TIME_SCALE_ENV, str(provider.time_scale()))
        try:
            progress(f"{self.name}: bringing up {entry.name}")
            provider.up()
            progress(f"{self.name}: deploying playbooks/site.yml to {entry.name}")
            deployed = run_playbook(provider, progress=progress)
            with open(os.path.join(entry_dir, "deploy.json"), "w", encoding="utf-8") as fh:
                json.dump(deployed.to_dict(), fh, indent=2)
            progress(f"{self.name}: deploy {deployed.status} in {deployed.seconds:.0f} s")
            nodes = read_node_facts(provider)
            facts["nodes"] = format_node_facts(nodes)
            progress(f"{self.name}: {facts['nodes']}")
            node = next(iter(nodes))
            release, os_release = nodes[node]["kernel"], nodes[node]["osRelease"]
            with open(os.path.join(entry_dir, "guest.json"), "w", encoding="utf-8") as fh:
                json.dump({"entry": entry.name, "kernelRelease": release, "node": node,
                           "accel": self.name,
                           "nodes": {n: {"os": f["os"], "kernelRelease": f["kernel"]}
                                     for n, f in nodes.items()}}, fh, indent=2)
            out = os.path.join(entry_dir, PREFLIGHT)
            os.makedirs(out, exist_ok=True)
            os_file = os.path.join(out, "os-release")
            with open(os_file, "w", encoding="utf-8") as fh:
                fh.write(os_release)
            verdicts = run_preflights(plan.profiles, out, progress,
                                      ["--os-release", os_file, "--kernel-release", release])
            if deployed.rc != 0 and verdicts.get("default", True):
                return EntryRun(error=f"{self.name}: deploy failed although preflight "
                                f"accepts {release}: {'; '.join(deployed.failed_tasks)}",
                                seconds=time.monotonic() - started, facts=facts)
            if plan.suites and verdicts.get("default", True):
                chosen = self.selection(entry, cluster, provider.inventory_path(),
                                        provider.name)
                run_suites(plan.suites, os.path.join(entry_dir, "suites"), k=plan.k,
                           env=chosen.env(), progress=progress,
                           title=f"{entry.name}: suites",
                           facts={"kernel": release, "provider": self.name,
                                  "nodes": facts["nodes"]})
        except Exception as exc:
            return EntryRun(error=f"{self.name}: {exc}", seconds=time.monotonic() - started,
                            facts=facts)
        finally:
            provider.down()
        return EntryRun(seconds=time.monotonic() - started, facts=facts)


def run_lines(desc: Mapping) -> list[str]:
    """The dry-run lines naming the suites of an entry and what they run against (pure)."""
    suites = ", ".join(desc["suites"]) if desc["suites"] else f"none ({desc['suitesSkipped']})"
    env = " ".join(f"{k}={v}" for k, v in desc["env"].items())
    nodes = ", ".join(f"{n['name']} {n['ip']}" for n in desc["nodes"])
    return [f"  suites: {suites}",
            f"  against inventory {desc['inventory']} (cluster {desc['cluster']})",
            f"  nodes: {nodes}",
            f"  suite environment: {env}"]


def format_description(desc: Mapping, os_entry: OsEntry | None = None) -> str:
    """The dry-run text of one entry of a cluster provider without a plan of its own (pure):
    what it boots, whether it can here, its steps, then `run_lines`."""
    what = ""
    if os_entry is not None:
        what = (f" ({os_entry.os_release.get('PRETTY_NAME', os_entry.name)}, kernel "
                f"{os_entry.kernel_source} {os_entry.kernel_package} "
                f"{os_entry.kernel_release})")
    avail = "available" if desc["available"] else f"unavailable here: {desc['availability']}"
    lines = [f"{desc['entry']}: {desc['provider']} cluster {desc['cluster']}, "
             f"{len(desc['nodes'])} nodes{what}",
             f"  provider {desc['provider']}: {avail}", "  steps:"]
    steps = [s for s in desc["steps"] if s != "suites" or desc["suites"]]
    lines += [f"    {i}. {step}" for i, step in enumerate(steps, start=1)]
    return "\n".join(lines + run_lines(desc))


def _registry_loader(name: str, make: Callable[[type, Entry], object]
                     ) -> Callable[[], tuple[type, Callable[[Entry], object]]]:
    """A ProviderTarget loader for a provider of `providers.registry` (imported when
    first needed; ProviderNotInBuild when its code is absent)."""
    def load() -> tuple[type, Callable[[Entry], object]]:
        from ..providers.registry import provider_class

        cls = provider_class(name)
        return cls, lambda entry: make(cls, entry)
    return load


def _vagrant_target(vagrant_provider: str = "libvirt") -> ProviderTarget:
    from ..providers.vagrant import plan as vagrant_plan

    return ProviderTarget("vagrant", _registry_loader("vagrant", lambda cls, entry: cls(
        vagrant_plan(entry.os_entry, entry.index, provider=vagrant_provider))), _os_entries)


def _vm_target() -> ProviderTarget:
    from ..providers.registry import VM_OS_ENTRIES, matrix_cluster_name

    return ProviderTarget(
        "vm", _registry_loader("vm", lambda cls, entry: cls(
            matrix_cluster_name(entry.name), nodes=entry.os_entry.nodes,
            os_entry=entry.name)),
        lambda matrix: [e for e in _os_entries(matrix) if e.name in VM_OS_ENTRIES],
        cluster_for=lambda entry: matrix_cluster_name(entry.name))


def _os_entries(matrix: Matrix) -> list[Entry]:
    return [Entry(name=e.name, expect=dict(e.expect), os_entry=e, index=i)
            for i, e in enumerate(matrix.os_entries)]


def target_for(provider: str, vagrant_provider: str = "libvirt") -> Target:
    """The target of a provider name (`qemu`, `local`, `vagrant`, `vm`)."""
    if provider == "qemu":
        return QemuTarget()
    if provider == "local":
        return LocalTarget()
    if provider == "vagrant":
        return _vagrant_target(vagrant_provider)
    if provider == "vm":
        return _vm_target()
    raise MatrixUsageError(f"unknown provider {provider!r}; known: {', '.join(PROVIDERS)}")


PROVIDERS = ("qemu", "local", "vagrant", "vm")
# The providers whose nodes exist before the suites run (ProviderTarget): --dry-run shows
# what they would run against.
CLUSTER_PROVIDERS = ("vagrant", "vm")


# --- the run (edge) ---------------------------------------------------------------------------

def run_matrix(target: Target, entries: Sequence[Entry], plan: RunPlan, *,
               progress: Progress = lambda _m: None, title: str = "cni-harness matrix"
               ) -> MatrixReport:
    """Run every entry in turn (one guest at a time), then judge and write the reports."""
    from cni_cilium.preflight import parse_os_release

    os.makedirs(plan.out, exist_ok=True)
    rows = []
    junit_parts: list[tuple[str, str, str]] = []
    extra_cases: list[Case] = []
    started = time.monotonic()
    for number, entry in enumerate(entries, 1):
        entry_dir = os.path.join(plan.out, entry.name)
        os.makedirs(entry_dir, exist_ok=True)
        clear_outputs(entry_dir)

        def entry_progress(message: str, prefix: str = f"[{number}/{len(entries)} "
                           f"{entry.name}]") -> None:
            progress(f"{prefix} {message}")

        entry_progress("starting")
        try:
            run = target.run_entry(entry, plan, entry_dir, entry_progress)
        except KeyboardInterrupt:
            raise
        except Exception as exc:        # one entry's crash must not lose the others
            run = EntryRun(error=f"{type(exc).__name__}: {exc}")
        obs = collect(entry_dir, list(plan.profiles), plan.suites, run.error)
        release = str(obs.facts.get("kernelRelease", ""))
        os_release: dict[str, str] = {}
        if entry.custom:        # a qemu guest over this host's root: the OS is this host's
            with open("/etc/os-release", encoding="utf-8") as fh:
                os_release = parse_os_release(fh.read())
        expect = expectations_for(entry, plan.profiles, os_release, release) \
            if (entry.expect or release) else {}
        cells = judge_entry(expect, list(plan.profiles), plan.suites, obs)
        facts = {"kernelRelease": release or "?", "accel": str(obs.facts.get("accel", "?")),
                 "seconds": f"{run.seconds:.1f}", **run.facts}
        rows.append(MatrixRow(entry=entry.name, facts=facts, cells=cells,
                              suites=tuple(obs.suites.values()), log_dir=entry_dir))
        for name in plan.suites:
            junit = os.path.join(entry_dir, "suites", name, "junit.xml")
            if name in obs.suites and os.path.exists(junit):
                with open(junit, encoding="utf-8") as fh:
                    junit_parts.append((f"{entry.name}/{name}", fh.read(), entry.name))
        extra_cases += synthetic_cases(entry.name, cells, plan.suites, obs)
        summary = ", ".join(f"{col} {cell.status}" for col, cell in cells.items())
        entry_progress(f"done in {run.seconds:.0f} s: kernel {release or '?'}; {summary}")
    columns = tuple([f"{PREFLIGHT}:{p}" for p in plan.profiles] + list(plan.suites))
    report = MatrixReport(provider=target.name, columns=columns, rows=tuple(rows),
                          facts={"suites": ", ".join(plan.suites) or "none",
                                 "profiles": ", ".join(plan.profiles),
                                 "total time": f"{time.monotonic() - started:.0f} s",
                                 "host kernel": os.uname().release,
                                 "project": PROJECT_ROOT})
    write_matrix_reports(report, plan.out, junit_parts, extra_cases, title)
    return report


def write_matrix_reports(report: MatrixReport, out: str,
                         junit_parts: Sequence[tuple[str, str, str]],
                         extra_cases: Sequence[Case], title: str) -> None:
    with open(os.path.join(out, "junit.xml"), "w", encoding="utf-8") as fh:
        fh.write(merge_junit(junit_parts, extra_cases))
    with open(os.path.join(out, "matrix.md"), "w", encoding="utf-8") as fh:
        fh.write(render_matrix_markdown(report, title))
    with open(os.path.join(out, "matrix.html"), "w", encoding="utf-8") as fh:
        fh.write(render_matrix_html(report, title))
    with open(os.path.join(out, "matrix.json"), "w", encoding="utf-8") as fh:
        json.dump(report.to_dict(), fh, indent=2)


__all__ = ["EXIT_PROVIDER_UNAVAILABLE", "PROVIDERS", "Entry", "RunPlan", "run_matrix",
           "target_for"]
