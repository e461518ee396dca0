"""The forms CI systems read: JUnit XML (one testcase per gate rule) and GitHub Actions' `::error::`
workflow commands."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone

from lipcheck.present import escape
from lipcheck.present.facts import audited_operator, number_text
from lipcheck.report import Report, RuleVerdict
from lipcheck.report.gate import listed

JUNIT_LISTED = 100  # failing sample indices in a JUnit failure's text


def render_junit(report: Report) -> str:
    """JUnit XML: one testsuite named after the model, one testcase per gate rule."""
    model, data = report.model, report.data
    operator = audited_operator(report.settings)
    return junit_xml(
        model.path,
        report.gate.rules,
        seconds=report.timing.total_seconds,
        timestamp=report.timing.started,
        properties={
            **({} if operator is None else {"operator": f"{operator.value} (sigma = ||{operator.symbol}||)"}),
            "model_sha256": model.sha256,
            "data": data.path if data.path is not None else f"random (seed {data.seed})",
            "data_sha256": data.sha256 or "",
            "samples": str(data.count),
            "reduction": report.summary.reduction,
            "value": repr(report.summary.value),
            **_bound_properties(report),
        },
    )


def _bound_properties(report: Report) -> dict[str, str]:
    """With --bound: the bound, its method and the bracket ratio, as JUnit properties."""
    if report.bound is None:
        return {}
    lower, upper = report.summary.max, report.bound.upper_bound
    return {
        "upper_bound": repr(upper),
        "bound_method": report.bound.method,
        "bracket_ratio": repr(upper / lower) if lower > 0 else "",
    }


def _junit_timestamp(iso: str) -> str:
    """An ISO 8601 time as JUnit's schema wants it: UTC, to the second, without a zone suffix."""
    try:
        moment = datetime.fromisoformat(iso)
    except ValueError:
        return iso
    if moment.tzinfo is not None:
        moment = moment.astimezone(timezone.utc).replace(tzinfo=None)
    return moment.strftime("%Y-%m-%dT%H:%M:%S")


def junit_xml(
    suite: str,
    verdicts: Sequence[RuleVerdict],
    *,
    seconds: float = 0.0,
    timestamp: str | None = None,
    properties: Mapping[str, str] | None = None,
) -> str:
    """A JUnit document of one testsuite `suite` with a testcase per verdict; a failed rule's testcase
    holds a <failure> whose message and text give the measured value and the threshold."""
    failures = sum(1 for v in verdicts if not v.passed)
    counts = {"tests": str(len(verdicts)), "failures": str(failures), "errors": "0"}
    suite = escape.junit(suite)
    root = ET.Element("testsuites", name="lipcheck", **counts, time=f"{seconds:.3f}")
    node = ET.SubElement(root, "testsuite", name=suite, **counts, skipped="0", time=f"{seconds:.3f}")
    if timestamp:
        node.set("timestamp", escape.junit(_junit_timestamp(timestamp)))
    if properties:
        listing = ET.SubElement(node, "properties")
        for name, value in properties.items():
            ET.SubElement(listing, "property", name=escape.junit(name), value=escape.junit(value))
    for verdict in verdicts:
        case = ET.SubElement(node, "testcase", classname=suite, name=escape.junit(verdict.name), time="0")
        if verdict.passed:
            ET.SubElement(case, "system-out").text = escape.junit(verdict.message)
            continue
        lines = [f"value: {verdict.value:.6g}", f"threshold: {verdict.threshold:.6g}"]
        if verdict.baseline is not None:
            lines.append(
                f"baseline: {escape.junit(verdict.baseline)} ({number_text(verdict.baseline_value)})"
            )
        if verdict.failing_samples:
            failing = verdict.failing_samples
            lines.append(f"failing samples ({len(failing)}): {listed(failing, JUNIT_LISTED)}")
        failure = ET.SubElement(
            case, "failure", message=escape.junit(verdict.message), type=escape.junit(verdict.name)
        )
        failure.text = "\n".join(lines)
    ET.indent(root)
    document = ET.tostring(root, encoding="unicode")
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + escape.xml_document(document) + "\n"


def github_annotations(verdicts: Sequence[RuleVerdict]) -> list[str]:
    """`::error::` workflow commands for the failed rules, so GitHub Actions marks them on the run."""
    return [
        f"::error title={escape.workflow_command(f'lipcheck {v.name}', property=True)}::"
        f"{escape.workflow_command(v.message)}"
        for v in verdicts
        if not v.passed
    ]


def _escape(text: str, property: bool = False) -> str:
    text = text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")
    return text.replace(":", "%3A").replace(",", "%2C") if property else text
