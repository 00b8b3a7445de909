"""Writes ``trajectory.json``: a recorded 30-step investigation, for ``bench/context.py``.

    python bench/data/make_trajectory.py

The outputs are synthetic but shaped like the real tools' results (``fs.read``,
``fs.list``, ``shell.run``, ``http.fetch`` TypedDicts) and generated from a fixed seed,
so the file is the same on every run. Each fact of the answer is buried in one or more
large outputs; no thought and no call argument contains one (the script checks).
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from _trajectory_text import (
    cron_log,
    git_log,
    git_show,
    grafana_json,
    incidents_html,
    ps_aux,
    replicas_json,
    reportgen_log,
    runbook_md,
    runs_json,
    status_html,
    warehouse_log,
)

HERE = Path(__file__).parent
R = random.Random(20240514)

TASK = (
    "The nightly report job (nightly-report) failed last night. Investigate why, using "
    "the ops workspace (logs, configs, job definitions) and the internal status pages, "
    "and write a short incident summary for the on-call channel: what failed, when, the "
    "error, the root cause, what is left to clean up, and who to escalate to."
)
SYSTEM = (
    "You are an operations agent working in the ops workspace. Use the tools to inspect "
    "files, run read-only commands and fetch internal pages. Quote error codes, paths, "
    "versions and timestamps exactly. Answer with a concise summary when you are done."
)
FACTS = [
    ("RG-5031", "the error code"),
    ("2024-05-14T02:17:42Z", "when the job failed"),
    ("2.7.1", "the reportgen version"),
    ("analytics.daily_revenue_rollup", "the table whose query timed out"),
    ("wh-replica-3", "the warehouse replica the job was pinned to"),
    ("INC-20417", "the maintenance incident on that replica"),
    ("9f3c2ab", "the commit that pinned the replica"),
    ("query_timeout_s: 900", "the timeout setting"),
    ("/var/run/reportgen/nightly.lock", "the stale lock file to remove"),
    ("reports/daily/2024-05-14/revenue.pdf", "the report that was not written"),
    ("#data-platform-oncall", "where to escalate"),
    ("r-7c1d2e", "the failed run's id"),
]
ANSWER = (
    "nightly-report failed at 2024-05-14T02:17:42Z (scheduler run r-7c1d2e, exit 3). "
    "reportgen 2.7.1 raised RG-5031: the query on analytics.daily_revenue_rollup timed "
    "out after 900 s (query_timeout_s: 900). Root cause: commit 9f3c2ab pinned the "
    "warehouse host to wh-replica-3, which was in scheduled maintenance (INC-20417, "
    "02:00-04:00 UTC) instead of the load-balanced wh-ro.internal. "
    "reports/daily/2024-05-14/revenue.pdf was not written, and the stale lock "
    "/var/run/reportgen/nightly.lock must be removed before a re-run "
    "(reportgen run --date 2024-05-14). Revert the pin; escalate in #data-platform-oncall."
)


def entries(names: list[tuple[str, str]], rng: random.Random) -> list[dict[str, Any]]:
    out = []
    for name, kind in sorted(names):
        size = 4096 if kind == "dir" else rng.randint(120, 9_000_000)
        out.append({"name": name, "type": kind, "size": size})
    return out


def listing(path: str, names: list[tuple[str, str]]) -> dict[str, Any]:
    return {"path": path, "entries": entries(names, R), "truncated": False}


def read(path: str, text: str) -> dict[str, Any]:
    size = len(text.encode())
    return {"path": path, "size": size, "bytes": size, "content": text, "truncated": False}


def run(stdout: str, stderr: str = "", code: int = 0) -> dict[str, Any]:
    return {
        "exit_code": code,
        "stdout": stdout,
        "stderr": stderr,
        "truncated": False,
        "timed_out": False,
    }


def fetch(url: str, body: str, kind: str, status: int = 200) -> dict[str, Any]:
    headers = {
        "cache-control": "no-cache, no-store, must-revalidate",
        "content-length": str(len(body.encode())),
        "content-type": kind,
        "date": "Tue, 14 May 2024 07:41:09 GMT",
        "server": "nginx/1.24.0",
        "strict-transport-security": "max-age=63072000; includeSubDomains",
        "x-request-id": f"{R.getrandbits(64):016x}",
        "vary": "Accept-Encoding",
    }
    return {"url": url, "status": status, "headers": headers, "content": body, "truncated": False}


def workspace() -> list[tuple[str, str]]:
    dirs = [
        "alerts",
        "bin",
        "config",
        "dashboards",
        "docs",
        "jobs",
        "logs",
        "notes",
        "reports",
        "run",
        "scripts",
        "sql",
        "terraform",
        "tests",
        ".git",
        ".github",
    ]
    files = [
        ".editorconfig",
        ".gitignore",
        "CODEOWNERS",
        "Makefile",
        "README.md",
        "pyproject.toml",
        "requirements.lock",
        "renovate.json",
        "CHANGELOG.md",
    ]
    return [(d, "dir") for d in dirs] + [(f, "file") for f in files]


def log_dir() -> list[tuple[str, str]]:
    names: list[tuple[str, str]] = [("reportgen", "dir"), ("archive", "dir")]
    services = [
        "nginx-access",
        "nginx-error",
        "etl-loader",
        "dashboards",
        "backup",
        "certbot",
        "metrics-push",
        "auth-proxy",
        "scheduler-agent",
    ]
    for service in services:
        names.append((f"{service}.log", "file"))
        for day in range(1, 14):
            names.append((f"{service}.log.{day}.gz", "file"))
    names += [
        ("cron.log", "file"),
        ("cron.log.1", "file"),
        ("syslog", "file"),
        ("warehouse-client.log", "file"),
        ("kern.log", "file"),
    ]
    return names


def reportgen_dir() -> list[tuple[str, str]]:
    names = [
        (f"reportgen-2024-{m:02d}-{d:02d}.log", "file")
        for m, days in ((3, range(16, 32)), (4, range(1, 31)), (5, range(1, 15)))
        for d in days
    ]
    return [*names, ("reportgen-debug.log", "file"), ("reportgen-2024-05-14.log.lock", "file")]


def daily_dirs() -> list[tuple[str, str]]:
    return [
        (f"2024-{m:02d}-{d:02d}", "dir")
        for m, days in ((2, range(14, 30)), (3, range(1, 32)), (4, range(1, 31)), (5, range(1, 15)))
        for d in days
    ]


def main() -> None:
    log14 = reportgen_log("2024-05-14", R, failed=True)
    log13 = reportgen_log("2024-05-13", R, failed=False)
    config_text = (HERE / "fixtures" / "reportgen.yaml").read_text()
    job_text = (HERE / "fixtures" / "nightly-report.toml").read_text()
    readme = (HERE / "fixtures" / "README.md").read_text()
    err_lines = "".join(
        f"{n}:{line}\n"
        for n, line in enumerate(log14.splitlines(), 1)
        if " ERROR " in line or " FATAL " in line
    )
    grep_replica = "".join(
        f"config/reportgen.yaml:{n}:{line}\n"
        for n, line in enumerate(config_text.splitlines(), 1)
        if "replica" in line
    )
    runbook = runbook_md()
    stale = "".join(
        f"{n}:{line}\n" for n, line in enumerate(runbook.splitlines(), 1) if "lock" in line
    )
    tail40 = "\n".join(log14.splitlines()[-40:]) + "\n"
    ls_run = (
        "total 16\n"
        "drwxr-xr-x  2 reportgen reportgen 4096 May 14 02:00 .\n"
        "drwxr-xr-x 14 root      root      4096 Apr  2 11:19 ..\n"
        "-rw-r--r--  1 reportgen reportgen    6 May 14 02:00 nightly.lock\n"
        "-rw-r--r--  1 reportgen reportgen    6 May 14 02:00 nightly.pid\n"
    )
    df = (
        "Filesystem      Size  Used Avail Use% Mounted on\n"
        "/dev/nvme0n1p1   98G   61G   37G  63% /\n"
        "tmpfs           7.8G  1.2M  7.8G   1% /dev/shm\n"
        "tmpfs           3.1G  1.9M  3.1G   1% /run\n"
        "/dev/nvme1n1    492G  318G  149G  69% /srv\n"
        "/dev/nvme0n1p15 105M  6.1M   99M   6% /boot/efi\n"
        "tmpfs           1.6G  4.0K  1.6G   1% /run/user/1001\n"
    )
    found = "reports/daily/2024-05-12/revenue.pdf\nreports/daily/2024-05-13/revenue.pdf\n"
    daily14 = [
        ("orders.csv", "file"),
        ("signups.csv", "file"),
        ("churn.csv", "file"),
        (".revenue.pdf.partial", "file"),
        ("charts", "dir"),
    ]
    status_url = "https://status.internal.example.com/"
    runs_url = "https://scheduler.internal.example.com/api/v1/jobs/nightly-report/runs?limit=25"
    replicas_url = "https://warehouse.internal.example.com/api/v2/replicas"
    grafana_url = "https://grafana.internal.example.com/api/ds/query?panel=wh-latency&from=now-12h"
    incidents_url = "https://status.internal.example.com/incidents?component=warehouse"
    plan: list[tuple[str, str, dict[str, Any], Any, str | None]] = [
        (
            "Start by looking at the workspace layout.",
            "fs.list",
            {"path": "."},
            listing(".", workspace()),
            None,
        ),
        (
            "Read the README to learn where the job's logs live.",
            "fs.read",
            {"path": "README.md"},
            read("README.md", readme),
            None,
        ),
        (
            "The logs folder should have the cron and job logs.",
            "fs.list",
            {"path": "logs"},
            listing("logs", log_dir()),
            None,
        ),
        (
            "Check cron for when the job ran and how it ended.",
            "shell.run",
            {"argv": ["tail", "-n", "260", "logs/cron.log"]},
            run(cron_log(R)),
            None,
        ),
        (
            "Find last night's job log.",
            "fs.list",
            {"path": "logs/reportgen"},
            listing("logs/reportgen", reportgen_dir()),
            None,
        ),
        (
            "Read the job log of the failed night.",
            "fs.read",
            {"path": "logs/reportgen/reportgen-2024-05-14.log"},
            read("logs/reportgen/reportgen-2024-05-14.log", log14),
            None,
        ),
        (
            "Pull out just the error lines.",
            "shell.run",
            {
                "argv": [
                    "grep",
                    "-n",
                    "-E",
                    "ERROR|FATAL",
                    "logs/reportgen/reportgen-2024-05-14.log",
                ]
            },
            run(err_lines),
            None,
        ),
        (
            "Count errors across all nights.",
            "shell.run",
            {"argv": ["sh", "-c", "grep -c ERROR logs/reportgen/*.log | sort -t: -k2 -n"]},
            None,
            "CommandRefusedError: 'sh' is not an allowed command (allowed: cat, cut, df, du, "
            "file, find, git, grep, head, ls, ps, sort, stat, tail, uniq, wc); there is no shell: "
            "pipes, globs and redirections are not available",
        ),
        (
            "Compare with the previous night, which succeeded.",
            "fs.read",
            {"path": "logs/reportgen/reportgen-2024-05-13.log"},
            read("logs/reportgen/reportgen-2024-05-13.log", log13),
            None,
        ),
        (
            "The two nights used different hosts; check the job's config.",
            "fs.read",
            {"path": "config/reportgen.yaml"},
            read("config/reportgen.yaml", config_text),
            None,
        ),
        (
            "See who changed the config recently.",
            "shell.run",
            {"argv": ["git", "log", "-n", "15", "--stat", "--", "config/"]},
            run(git_log(R)),
            None,
        ),
        (
            "Look at the diff of the recent config change.",
            "shell.run",
            {"argv": ["git", "show", "HEAD~2", "--", "config/reportgen.yaml"]},
            run(git_show()),
            None,
        ),
        (
            "Check the internal status page for warehouse problems.",
            "http.fetch",
            {"url": status_url},
            fetch(status_url, status_html(R), "text/html; charset=utf-8"),
            None,
        ),
        (
            "Get the scheduler's record of recent runs.",
            "http.fetch",
            {"url": runs_url},
            fetch(runs_url, runs_json(R), "application/json"),
            None,
        ),
        (
            "Check the replicas' state in the warehouse API.",
            "http.fetch",
            {"url": replicas_url},
            fetch(replicas_url, replicas_json(R), "application/json"),
            None,
        ),
        (
            "Which reports were written recently?",
            "fs.list",
            {"path": "reports/daily"},
            listing("reports/daily", daily_dirs()),
            None,
        ),
        (
            "Look into last night's report folder.",
            "fs.list",
            {"path": "reports/daily/2024-05-14"},
            listing("reports/daily/2024-05-14", daily14),
            None,
        ),
        (
            "Read the job definition for outputs and locking.",
            "fs.read",
            {"path": "jobs/nightly-report.toml"},
            read("jobs/nightly-report.toml", job_text),
            None,
        ),
        (
            "Is the lock still held?",
            "shell.run",
            {"argv": ["ls", "-la", "run/reportgen"]},
            run(ls_run),
            None,
        ),
        ("Rule out a full disk.", "shell.run", {"argv": ["df", "-h"]}, run(df), None),
        (
            "Make sure no reportgen process is still running.",
            "shell.run",
            {"argv": ["ps", "aux"]},
            run(ps_aux(R)),
            None,
        ),
        (
            "Check warehouse latency over the night.",
            "http.fetch",
            {"url": grafana_url},
            fetch(grafana_url, grafana_json(R), "application/json"),
            None,
        ),
        (
            "Read the warehouse client log around the failure.",
            "fs.read",
            {"path": "logs/warehouse-client.log"},
            read("logs/warehouse-client.log", warehouse_log(R)),
            None,
        ),
        (
            "Which files mention the replica?",
            "shell.run",
            {"argv": ["grep", "-rn", "replica", "config/", "jobs/"]},
            run(grep_replica),
            None,
        ),
        (
            "Read the runbook for re-running and escalation.",
            "fs.read",
            {"path": "docs/runbook-reportgen.md"},
            read("docs/runbook-reportgen.md", runbook),
            None,
        ),
        (
            "Get the warehouse incident details.",
            "http.fetch",
            {"url": incidents_url},
            fetch(incidents_url, incidents_html(R), "text/html; charset=utf-8"),
            None,
        ),
        (
            "See who is on call right now.",
            "http.fetch",
            {"url": "https://api.pagerduty.com/oncalls?schedule_ids[]=PDATA01"},
            None,
            "HostRefusedError: api.pagerduty.com is not in the network policy's hosts "
            "(allowed: *.internal.example.com)",
        ),
        (
            "Re-check the end of the failed log.",
            "shell.run",
            {"argv": ["tail", "-n", "40", "logs/reportgen/reportgen-2024-05-14.log"]},
            run(tail40),
            None,
        ),
        (
            "Confirm which nights produced a revenue report.",
            "shell.run",
            {
                "argv": [
                    "find",
                    "reports/daily",
                    "-name",
                    "revenue.pdf",
                    "-newer",
                    "reports/daily/2024-05-11",
                ]
            },
            run(found),
            None,
        ),
        (
            "Find the runbook's instructions on locks.",
            "shell.run",
            {"argv": ["grep", "-n", "lock", "docs/runbook-reportgen.md"]},
            run(stale),
            None,
        ),
    ]
    steps = []
    for index, (thought, tool, args, result, error) in enumerate(plan, 1):
        steps.append(
            {
                "index": index,
                "tool": tool,
                "call_id": f"call_{R.getrandbits(96):024x}",
                "arguments": args,
                "result": result,
                "error": error,
                "thought": thought,
            }
        )
    check(steps)
    data = {
        "task": TASK,
        "system_prompt": SYSTEM,
        "steps": steps,
        "answer": ANSWER,
        "facts": [{"text": text, "what": what} for text, what in FACTS],
    }
    out = HERE / "trajectory.json"
    out.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n")
    print(f"{out}: {out.stat().st_size:,} bytes, {len(steps)} steps")


def check(steps: list[dict[str, Any]]) -> None:
    """Every fact is in the answer and in some observation, never in a thought or an
    argument."""
    for text, _ in FACTS:
        assert text in ANSWER, text
        where = [s["index"] for s in steps if text in json.dumps(s["result"], ensure_ascii=False)]
        assert where, f"{text} is in no observation"
        for s in steps:
            leak = text in s["thought"] or text in json.dumps(s["arguments"], ensure_ascii=False)
            assert not leak, f"{text} leaks into step {s['index']}"
        print(f"  {text:40} steps {where}")


if __name__ == "__main__":
    main()
