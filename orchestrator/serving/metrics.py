"""Read Triton's and the jigsaw backend's Prometheus metrics (the server's metrics port)."""
from __future__ import annotations

import urllib.error
import urllib.request
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

from ..errors import UnreachableError


@dataclass(frozen=True)
class Scrape:
    """One scrape: ``samples[(name, sorted label items)] = value``; counters are named ``<name>_total``."""

    t: float
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float]

    def total(self, name: str, **labels: str) -> float:
        """Sum of the samples called ``name`` whose labels include ``labels`` (0 when none)."""
        want = set(labels.items())
        return sum(v for (n, items), v in self.samples.items() if n == name and want <= set(items))

    def by_label(self, name: str, *keys: str, **labels: str) -> dict[tuple[str, ...], float]:
        """``name``'s samples matching ``labels``, summed per value tuple of the label ``keys``."""
        want = set(labels.items())
        out: dict[tuple[str, ...], float] = {}
        for (n, items), v in self.samples.items():
            if n == name and want <= set(items):
                d = dict(items)
                k = tuple(d.get(key, "") for key in keys)
                out[k] = out.get(k, 0.0) + v
        return out


def parse(text: str, t: float) -> Scrape:
    """Parse Prometheus text exposition taken at time ``t``."""
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return Scrape(t, samples)


def scrape(url: str, t: float, timeout_s: float = 5.0) -> Scrape:
    """Fetch and parse the metrics page at ``url`` (e.g. http://127.0.0.1:8002/metrics); UnreachableError
    (naming ``url``) when nothing answers there."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:
            return parse(resp.read().decode(), t)
    except urllib.error.HTTPError:
        raise  # something answered: its error is the message
    except (urllib.error.URLError, OSError) as exc:  # refused, unresolvable, timed out
        reason = getattr(exc, "reason", None) or exc
        raise UnreachableError(f"cannot reach the server's metrics at {url}: {reason}") from None


def increase(before: float, after: float) -> float:
    """A counter's increase between two scrapes; a drop means it restarted from 0 (model reloaded)."""
    return after - before if after >= before else after


def requests_total(s: Scrape, model: str) -> float:
    """Requests a model has finished (succeeded or failed): arrivals, for the app's graph model."""
    return (s.total("nv_inference_request_success_total", model=model)
            + s.total("nv_inference_request_failure_total", model=model))
