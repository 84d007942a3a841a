"""docs/aws.md states exactly the IAM policies the code creates (aws/iam.py)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from starburst_executor.aws.iam import (
    client_policy,
    ecs_task_trust,
    policy_actions,
    task_role_policy,
)

DOC = Path(__file__).resolve().parent.parent / "docs" / "aws.md"


def _section(text: str, title: str) -> str:
    """From ``title`` to the next heading of the same level."""
    start = text.index(title)
    end = text.find("\n" + title.split(" ")[0] + " ", start + len(title))
    return text[start : end if end >= 0 else len(text)]


def _json_blocks(text: str) -> list[object]:
    return [json.loads(b) for b in re.findall(r"```json\n(.*?)\n```", text, flags=re.S)]


def test_the_docs_policies_are_the_ones_the_code_creates():
    text = DOC.read_text()
    expected = [
        client_policy("<account>", "<bucket>", kms_key_arn="<kms-key-arn>"),
        task_role_policy("<bucket>", "starburst"),
        ecs_task_trust("<account>"),
    ]
    assert _json_blocks(_section(text, "## IAM:")) == expected


def test_the_docs_table_lists_every_statement_of_the_client_policy():
    section = _section(DOC.read_text(), "### Your credentials")
    rows = [
        r for r in section.splitlines() if r.startswith("| ") and not r.startswith("| statement")
    ]
    policy = client_policy("<account>", "<bucket>", kms_key_arn="<kms-key-arn>")
    by_sid = {s["Sid"]: s for s in policy["Statement"]}
    listed: list[str] = []
    for row in rows:
        sid, actions, resource, _ = (c.strip() for c in row.strip("|").split("|"))
        listed += actions.split(", ")
        wanted = by_sid.pop(sid)["Resource"]
        resources = [wanted] if isinstance(wanted, str) else wanted
        assert resource.split("`")[1].split(", ") == resources
    assert not by_sid  # every statement has its row
    in_order = [
        a
        for s in policy["Statement"]
        for a in ([s["Action"]] if isinstance(s["Action"], str) else s["Action"])
    ]
    assert listed == in_order


def test_workers_cannot_rewrite_payloads_or_manifests_and_get_kms_only_when_asked():
    policy = task_role_policy("b", "starburst")
    writable = [
        r
        for s in policy["Statement"]
        if s["Action"] in ("s3:PutObject", "s3:DeleteObject")
        for r in s["Resource"]
    ]
    assert writable and all("/sessions/*/" in r for r in writable)
    assert not any("/tasks/" in r or "manifest" in r for r in writable)
    assert not any(a.startswith("kms:") for a in policy_actions(policy))
    with_key = task_role_policy("b", "starburst", "arn:aws:kms:us-east-1:1:key/k")
    assert {"kms:GenerateDataKey", "kms:Decrypt"} <= policy_actions(with_key)
    trust = ecs_task_trust("123456789012")["Statement"][0]["Condition"]
    assert trust["StringEquals"]["aws:SourceAccount"] == "123456789012"
    passes = [s for s in client_policy("1", "b")["Statement"] if s["Action"] == "iam:PassRole"]
    assert passes and all("iam:PassedToService" in s["Condition"]["StringEquals"] for s in passes)
