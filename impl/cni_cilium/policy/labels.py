"""Which labels count for identities: Cilium's label filter, driven by `labelsRegex` (pure).

A pattern is `[source:][!]regex`; `!` excludes. A pattern matches a label when its source
is empty, `any` or the label's, and the regular expression matches at the start of the key
(the match's length is its weight). A label counts when the longest including match is
longer than the shortest excluding one, or, when no including pattern was configured, when
no excluding pattern matches it. The defaults below are always in force; `labelsRegex`
adds to them (an including pattern there switches to "only what is included").
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Mapping

DEFAULT_PATTERNS = (
    "reserved:.*",
    r"io\.kubernetes\.pod\.namespace",
    r"io\.cilium\.k8s\.namespace\.labels",
    r"app\.kubernetes\.io",
    r"io\.cilium\.k8s\.policy\.cluster",
    r"io\.cilium\.k8s\.policy\.serviceaccount",
    r"!io\.kubernetes",
    r"!kubernetes\.io",
    r"!statefulset\.kubernetes\.io/pod-name",
    r"!apps\.kubernetes\.io/pod-index",
    r"!batch\.kubernetes\.io/job-completion-index",
    r"!batch\.kubernetes\.io/controller-uid",
    r"!.*beta\.kubernetes\.io",
    r"!k8s\.io",
    "!pod-template-generation",
    "!pod-template-hash",
    "!controller-revision-hash",
    "!controller-uid",
    "!annotation.*",
    "!etcd_node",
    r"!topology\.kubernetes\.io",
)
_SOURCE = re.compile(r"^([a-z0-9-]*):(.*)$")


@dataclass(frozen=True)
class Pattern:
    source: str          # "" or "any": every source
    regex: re.Pattern
    exclude: bool
    text: str

    def weight(self, source: str, key: str) -> int:
        """Length of the match at the start of the key, 0 when it does not match."""
        if self.source not in ("", "any") and self.source != source:
            return 0
        found = self.regex.match(key)
        return found.end() if found else 0


def parse_pattern(text: str) -> Pattern:
    """`[source:][!]regex` (a regex containing ':' needs an explicit, maybe empty, source)."""
    source, body = "", text
    found = _SOURCE.match(text)
    if found:
        source, body = found.group(1), found.group(2)
    exclude = body.startswith("!")
    if exclude:
        body = body[1:]
    return Pattern(source, re.compile(body), exclude, text)


@dataclass(frozen=True)
class LabelFilter:
    patterns: tuple[Pattern, ...]
    inclusive: bool      # a configured pattern includes: only included labels count

    @classmethod
    def from_settings(cls, labels_regex: Iterable[str] | None) -> LabelFilter:
        custom = tuple(parse_pattern(p) for p in labels_regex or ())
        defaults = tuple(parse_pattern(p) for p in DEFAULT_PATTERNS)
        return cls(defaults + custom, any(not p.exclude for p in custom))

    def counts(self, source: str, key: str) -> bool:
        included = ignored = 0
        for pattern in self.patterns:
            weight = pattern.weight(source, key)
            if not weight:
                continue
            if pattern.exclude:
                ignored = weight if ignored == 0 else min(ignored, weight)
            else:
                included = max(included, weight)
        return (not self.inclusive and ignored == 0) or included > ignored

    def identity_labels(self, labels: Mapping[str, str], source: str = "k8s") -> dict[str, str]:
        """The labels of `labels` that count for an identity."""
        return {k: v for k, v in labels.items() if self.counts(source, k)}
