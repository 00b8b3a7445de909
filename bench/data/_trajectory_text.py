"""Generators of the large tool outputs in ``trajectory.json`` (see make_trajectory.py).

Each takes the script's seeded ``random.Random`` so the outputs are the same every run.
"""

from __future__ import annotations

import json
import random
from datetime import datetime, timedelta

TABLES = [
    "revenue_by_region", "revenue_by_product", "fx_adjusted_revenue", "orders_daily_agg",
    "orders_by_channel", "refunds_daily", "chargebacks_daily", "subscriptions_active",
    "subscriptions_started", "subscriptions_cancelled", "mrr_movements", "arpu_by_plan",
    "signups_daily", "signups_by_source", "trials_started", "trials_converted",
    "payments_failed", "payments_retried", "invoices_open", "invoices_paid",
    "tax_by_country", "discounts_applied", "coupons_redeemed", "orders_by_region",
    "basket_size_daily", "sessions_daily", "active_users_daily", "active_users_weekly",
    "retention_cohorts", "ltv_by_cohort", "daily_revenue_rollup", "revenue_forecast_input",
    "inventory_snapshot", "shipments_daily", "returns_daily", "support_tickets_daily",
    "nps_responses", "marketing_spend_daily", "cac_by_channel", "orders_export",
    "signups_export", "partner_payouts", "affiliate_clicks", "churn_export",
    "churn_reasons", "plan_changes", "seats_by_account", "usage_events_daily",
    "api_calls_daily", "storage_usage_daily", "email_sends_daily", "sms_sends_daily",
    "fraud_flags_daily", "kyc_checks_daily", "ledger_balances", "fx_rates_daily",
    "accounts_created", "accounts_closed", "regions_dim_refresh", "calendar_dim_check",
]  # fmt: skip


def _ts(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


def reportgen_log(date: str, rng: random.Random, *, failed: bool) -> str:
    """The job log of one night; the failing night hangs on q031 until the timeout."""
    day = datetime.fromisoformat(date)
    t = day.replace(hour=2, minute=0, second=3, microsecond=412000)
    host = "wh-replica-3.internal" if failed else "wh-ro.internal"
    pid = 21741 if failed else 20112
    lines: list[tuple[datetime, str]] = []

    def log(at: datetime, level: str, part: str, text: str) -> None:
        lines.append((at, f"{_ts(at)} {level:<5} [{part}] {text}"))

    log(
        t,
        "INFO",
        "main",
        f"reportgen 2.7.1 (build 4f1e9d0, python 3.11.8) starting "
        f"job=nightly-report date={date} pid={pid}",
    )
    t += timedelta(milliseconds=689)
    log(t, "INFO", "config", "read /etc/reportgen/reportgen.yaml (profile=prod, 14 sections)")
    log(t, "INFO", "lock", "acquired lock file (pid written)")
    t += timedelta(milliseconds=rng.randint(200, 900))
    log(
        t,
        "INFO",
        "fx",
        f"GET https://fx.internal.example.com/rates?date={date} 200 "
        f"{rng.randint(80, 240)}ms (32 currencies)",
    )
    for n in range(4):
        t += timedelta(milliseconds=rng.randint(30, 120))
        log(
            t,
            "INFO",
            "wh",
            f"pool connection {n + 1}/4 open host={host} port=5432 "
            "db=analytics user=svc_reportgen tls=TLSv1.3 "
            f"backend_pid={80100 + rng.randint(0, 9000)}",
        )
    start = t
    workers = [start + timedelta(milliseconds=rng.randint(10, 90)) for _ in range(4)]
    for q, table in enumerate(TABLES, 1):
        w = min(range(4), key=lambda i: workers[i])
        at = workers[w]
        log(
            at,
            "INFO",
            "query",
            f"q{q:03d} start worker={w + 1} table=analytics.{table} "
            f'params={{"date": "{date}", "currency": "EUR"}}',
        )
        if q == 31 and failed:
            at = max(at, day.replace(hour=2, minute=2, second=42, microsecond=118000))
            lines[-1] = (at, lines[-1][1].replace(lines[-1][1][:24], _ts(at)))
            hang = at
            for beat in range(60, 900, 60):
                log(
                    hang + timedelta(seconds=beat),
                    "INFO",
                    "wh",
                    f"q031 still running elapsed={beat}s backend_pid=88213 state=active "
                    f"wait_event=ClientRead rows_fetched=0",
                )
            workers[w] = at + timedelta(seconds=10_000)
            continue
        took = rng.uniform(0.4, 9.0) if q != 31 else 212.4
        if rng.random() < 0.12:
            took = rng.uniform(31, 75)
        done = at + timedelta(seconds=took)
        if took > 30:
            log(
                done,
                "WARN",
                "wh",
                f"slow query q{q:03d} elapsed={took:.1f}s threshold=30s "
                f"plan=HashAggregate->Seq Scan on {table} (explain saved)",
            )
        log(
            done,
            "INFO",
            "query",
            f"q{q:03d} done rows={rng.randint(40, 250_000)} "
            f"elapsed={took:.2f}s bytes={rng.uniform(0.01, 24):.1f}MB",
        )
        workers[w] = done + timedelta(milliseconds=rng.randint(5, 60))
    t = max(w for w in workers if w < start + timedelta(seconds=5000))
    for name, query in (("orders.csv", 40), ("signups.csv", 41), ("churn.csv", 44)):
        t += timedelta(milliseconds=rng.randint(200, 1400))
        log(
            t,
            "INFO",
            "render",
            f"wrote reports/daily/{date}/{name} from q{query:03d} "
            f"({rng.randint(2_000, 90_000)} rows, sha256={rng.getrandbits(64):016x}...)",
        )
    for page in range(1, 49 if not failed else 13):
        t += timedelta(milliseconds=rng.randint(150, 700))
        log(
            t,
            "INFO",
            "render",
            f"revenue.pdf page {page}/48 chart=c{rng.randint(1, 99):02d} "
            f"took {rng.randint(90, 800)}ms",
        )
    for minute in range(1, 19):
        at = start + timedelta(seconds=60 * minute, milliseconds=rng.randint(0, 999))
        log(
            at,
            "INFO",
            "metrics",
            f"pushed 27 series to pushgateway "
            f"(rss={rng.randint(410, 890)}MB cpu={rng.uniform(3, 95):.1f}%)",
        )
    if failed:
        t = hang + timedelta(seconds=900, milliseconds=2)  # 02:17:42.120
        log(
            t,
            "ERROR",
            "query",
            "q031 failed: RG-5031 warehouse query timed out after 900s "
            "(table=analytics.daily_revenue_rollup host=wh-replica-3.internal backend_pid=88213)",
        )
        t += timedelta(milliseconds=40)
        log(
            t,
            "ERROR",
            "wh",
            "cancel of backend_pid=88213 did not complete: server answered "
            "57P03 cannot_connect_now (the database system is in maintenance mode)",
        )
        t += timedelta(milliseconds=11)
        log(
            t,
            "ERROR",
            "render",
            f"revenue.pdf: upstream query q031 failed; output "
            f"reports/daily/{date}/revenue.pdf not written (12/48 pages discarded)",
        )
        log(t, "FATAL", "main", "job nightly-report failed: RG-5031 (1 of 60 queries failed)")
        t += timedelta(milliseconds=6)
        log(
            t,
            "WARN",
            "lock",
            "fatal shutdown: lock file /var/run/reportgen/nightly.lock "
            "left in place (remove_on_exit skipped)",
        )
        for n in range(1, 46):
            t += timedelta(milliseconds=rng.randint(1, 9))
            log(
                t,
                "INFO",
                "cleanup",
                f"removed /tmp/reportgen/{pid}/chart_{n:03d}.png ({rng.randint(20, 300)}KB)",
            )
        log(t, "INFO", "notify", "posted failure to slack #reports-nightly (log tail: 40 lines)")
        log(t, "INFO", "notify", "mailed reports-owners@example.com (status=3)")
        log(t, "INFO", "metrics", "pushed reportgen_last_status=3 reportgen_duration_s=1060")
        log(t, "INFO", "main", "exiting with status 3 (RG-5031) failed_at=2024-05-14T02:17:42Z")
    else:
        t += timedelta(milliseconds=820)
        log(
            t,
            "INFO",
            "render",
            f"wrote reports/daily/{date}/revenue.pdf (48 pages, "
            f"{rng.randint(1_900_000, 2_600_000)} bytes)",
        )
        for n in range(1, 46):
            t += timedelta(milliseconds=rng.randint(1, 9))
            log(
                t,
                "INFO",
                "cleanup",
                f"removed /tmp/reportgen/{pid}/chart_{n:03d}.png ({rng.randint(20, 300)}KB)",
            )
        log(t, "INFO", "lock", "released lock file")
        log(t, "INFO", "metrics", "pushed reportgen_last_status=0")
        log(t, "INFO", "main", "finished in 688s, exiting with status 0")
    lines.sort(key=lambda item: item[0])
    return "\n".join(text for _, text in lines) + "\n"


def cron_log(rng: random.Random) -> str:
    """The last 260 lines of /var/log/cron up to 07:40 on May 14."""
    jobs = [
        ("metrics", 10, 0, "/usr/local/bin/push-host-metrics"),
        ("dashboards", 15, 2, "/opt/dashboards/bin/refresh --all-views"),
        ("etl", 60, 5, "/opt/etl-loader/bin/load-billing-export --since 1h"),
    ]
    base = datetime(2024, 5, 13, 23, 0)
    runs: list[tuple[datetime, str, str]] = []
    for user, every, offset, cmd in jobs:
        t = base + timedelta(minutes=offset)
        while t < base + timedelta(hours=8, minutes=40):
            runs.append((t + timedelta(seconds=1), user, cmd))
            t += timedelta(minutes=every)
    reportgen = (
        datetime(2024, 5, 14, 2, 0, 1),
        "reportgen",
        "/opt/reportgen/bin/run-nightly.sh --date today --config /etc/reportgen/reportgen.yaml",
    )
    runs += [
        reportgen,
        (datetime(2024, 5, 14, 0, 0, 1), "root", "certbot renew -q"),
        (
            datetime(2024, 5, 14, 3, 30, 1),
            "backup",
            "/usr/local/bin/backup-configs --target s3://ops-backups/ops-batch-01",
        ),
    ]
    runs.sort()
    steps = [rng.randint(3, 60) for _ in runs]
    first = 21734 - sum(steps[: runs.index(reportgen)])
    events: list[tuple[datetime, str]] = []
    pid = first
    for (start, user, cmd), step in zip(runs, steps, strict=True):
        events.append(
            (
                start,
                f"CRON[{pid}]: pam_unix(cron:session): session opened for "
                f"user {user}(uid={1000 + len(user)}) by (uid=0)",
            )
        )
        events.append((start, f"CRON[{pid}]: ({user}) CMD ({cmd})"))
        if user == "reportgen":
            end = datetime(2024, 5, 14, 2, 17, 43)
            events += [
                (
                    start,
                    "run-nightly.sh[21741]: starting reportgen (lock ok, 60 queries, 4 workers)",
                ),
                (end, "run-nightly.sh[21741]: reportgen exited with status 3 after 1060s"),
                (end, f"CRON[{pid}]: (CRON) info (No MTA installed, discarding output)"),
            ]
        else:
            end = start + timedelta(seconds=rng.randint(2, 240))
        events.append((end, f"CRON[{pid}]: pam_unix(cron:session): session closed for user {user}"))
        pid += step
    events.sort(key=lambda item: item[0])
    lines = [f"{t.strftime('%b %d %H:%M:%S')} ops-batch-01 {text}" for t, text in events]
    return "\n".join(lines[-260:]) + "\n"


def git_log(rng: random.Random) -> str:
    """``git log -n 15 --stat -- config/``: HEAD~2 is the pin to wh-replica-3."""
    people = [
        ("Priya Raman", "priya.raman"),
        ("Tom Becker", "tom.becker"),
        ("Aiko Tanaka", "aiko.tanaka"),
        ("Luis Ortega", "luis.ortega"),
        ("Renovate Bot", "bot+renovate"),
    ]
    subjects = [
        ("config: etl-loader batch size 5000 -> 8000", "config/etl-loader.yaml", 2, 1),
        ("config: dashboards refresh every 15 min instead of 10", "config/dashboards.yaml", 1, 1),
        (
            "config: pin warehouse host to a single replica for the load test (PLAT-3312)",
            "config/reportgen.yaml",
            3,
            1,
        ),
        ("config: reportgen slow query threshold 30s", "config/reportgen.yaml", 1, 1),
        ("chore(deps): update fonts bundle to 2024.04", "config/reportgen.yaml", 1, 1),
        ("config: certbot deploy hook reloads nginx", "config/certbot.yaml", 4, 0),
        ("config: etl-loader retries 3 -> 5", "config/etl-loader.yaml", 1, 1),
        ("config: auth-proxy session ttl 8h", "config/auth-proxy.yaml", 1, 1),
        ("config: reportgen parallelism 4", "config/reportgen.yaml", 1, 1),
        ("config: metrics-push job label", "config/metrics-push.yaml", 2, 2),
        ("config: dashboards new view orders_by_channel", "config/dashboards.yaml", 12, 0),
        ("config: reportgen notify reports-owners on failure", "config/reportgen.yaml", 3, 0),
        ("config: nginx gzip for text/csv", "config/nginx.conf", 1, 0),
        ("config: backup-configs to ops-backups bucket", "config/backup.yaml", 2, 2),
        ("config: reportgen fx source moved to fx.internal", "config/reportgen.yaml", 1, 1),
    ]
    out = []
    when = datetime(2024, 5, 14, 9, 12, 44)
    for n, (subject, path, plus, minus) in enumerate(subjects):
        sha = (
            "9f3c2ab8e1d04c6f5a7b2e9c3d1f0a8b6c4e2d17" if n == 2 else f"{rng.getrandbits(160):040x}"
        )
        if n == 2:
            when = datetime(2024, 5, 13, 16, 42, 10)
            name, mail = people[0]
        else:
            when -= timedelta(hours=rng.randint(5, 90), minutes=rng.randint(0, 59))
            name, mail = people[rng.randrange(len(people))]
        bar = "+" * plus + "-" * minus
        out.append(
            f"commit {sha}\nAuthor: {name} <{mail}@example.com>\n"
            f"Date:   {when.strftime('%a %b %d %H:%M:%S %Y')} +0200\n\n    {subject}\n\n"
            f" {path} | {plus + minus} {bar}\n 1 file changed, {plus} insertions(+), "
            f"{minus} deletions(-)\n"
        )
    return "\n".join(out)


def git_show() -> str:
    """``git show HEAD~2 -- config/reportgen.yaml``: no hash in the arguments."""
    return (
        "commit 9f3c2ab8e1d04c6f5a7b2e9c3d1f0a8b6c4e2d17\n"
        "Author: Priya Raman <priya.raman@example.com>\n"
        "Date:   Mon May 13 16:42:10 2024 +0200\n\n"
        "    config: pin warehouse host to a single replica for the load test (PLAT-3312)\n\n"
        "    The load test measures one replica under reportgen's query mix; revert after\n"
        "    2024-05-20.\n\n"
        "diff --git a/config/reportgen.yaml b/config/reportgen.yaml\n"
        "index 3b1c0de..a9e47f2 100644\n"
        "--- a/config/reportgen.yaml\n+++ b/config/reportgen.yaml\n"
        "@@ -10,7 +10,9 @@ log:\n \n warehouse:\n-  host: wh-ro.internal\n"
        "+  # Load-balanced read-only endpoint: wh-ro.internal\n"
        "+  # PLAT-3312: pinned to a single replica for the load test, revert after 2024-05-20\n"
        "+  host: wh-replica-3.internal\n   port: 5432\n   database: analytics\n"
        "   user: svc_reportgen\n"
    )


_CSS = """
:root{--green:#2fcc66;--yellow:#f1c40f;--orange:#e67e22;--red:#e74c3c;--blue:#3498db}
body{font-family:-apple-system,BlinkMacSystemFont,"Segoe UI",Roboto,sans-serif;margin:0;
color:#333;background:#fafafa}.container{max-width:960px;margin:0 auto;padding:0 20px}
header{background:#1d2733;color:#fff;padding:18px 0}header a{color:#fff}
.components{border:1px solid #e0e0e0;border-radius:4px;background:#fff}
.component{display:flex;justify-content:space-between;padding:12px 16px;
border-bottom:1px solid #eee}.status-operational{color:var(--green)}
.status-maintenance{color:var(--blue)}.status-degraded{color:var(--yellow)}
.incident{margin:12px 0;padding:12px;background:#fff;border-left:4px solid var(--blue)}
.incident h4{margin:0 0 6px}.update{font-size:13px;color:#555;margin:4px 0}
footer{font-size:12px;color:#888;padding:30px 0}.uptime-bar{display:flex;gap:1px}
.uptime-bar span{width:4px;height:24px;background:var(--green)}
"""

_COMPONENTS = [
    "API Gateway", "Auth Proxy", "Billing Export", "ETL Loader", "Scheduler",
    "Dashboards", "Object Storage", "Message Queue", "Search", "Email Relay",
    "SMS Gateway", "FX Rates Service", "Pushgateway", "Grafana", "Log Pipeline",
    "Warehouse (wh-primary)", "Warehouse (wh-replica-1)", "Warehouse (wh-replica-2)",
    "Warehouse (wh-replica-3)", "Warehouse (wh-replica-4)", "Warehouse read endpoint (wh-ro)",
    "CI Runners", "Artifact Registry", "VPN", "DNS", "Secrets Manager",
]  # fmt: skip


def _uptime(rng: random.Random) -> str:
    return "".join(
        f'<span title="{rng.choice(["100%", "100%", "100%", "99.98%"])}"></span>' for _ in range(30)
    )


def status_html(rng: random.Random) -> str:
    """The status page: components, maintenance (INC-20417), past incidents."""
    rows = []
    for name in _COMPONENTS:
        state = "Under Maintenance" if "replica-3" in name else "Operational"
        css = "maintenance" if "replica-3" in name else "operational"
        rows.append(
            f'<div class="component" data-component-id="{rng.getrandbits(40):010x}">'
            f'<span class="name">{name}</span><span class="status-{css}">{state}</span>'
            f'<div class="uptime-bar">{_uptime(rng)}</div></div>'
        )
    past = []
    day = datetime(2024, 5, 13)
    titles = [
        "Elevated API latency",
        "Delayed billing export",
        "Grafana dashboards slow",
        "Email relay queueing",
        "Scheduler UI errors",
        "Search reindex running long",
        "ETL loader backlog",
        "VPN reconnects in eu-west",
    ]
    number = 20416
    for _ in range(14):
        items = []
        for _ in range(rng.randint(0, 2)):
            number -= rng.randint(1, 9)
            items.append(
                f'<div class="incident resolved"><h4><a href="/incidents/INC-{number}">'
                f'{rng.choice(titles)}</a></h4><p class="update"><strong>Resolved</strong> - '
                f'This incident has been resolved. Ref INC-{number}.</p><p class="update">'
                f"{day.strftime('%b %d')}, {rng.randint(0, 23):02d}:{rng.randint(0, 59):02d} UTC"
                "</p></div>"
            )
        body = "".join(items) or '<p class="none">No incidents reported.</p>'
        past.append(f'<div class="day"><h3>{day.strftime("%b %d, %Y")}</h3>{body}</div>')
        day -= timedelta(days=1)
    maintenance = (
        '<div class="incident maintenance"><h4><a href="/incidents/INC-20417">Warehouse '
        "replica wh-replica-3: storage firmware upgrade</a></h4>"
        '<p class="update"><strong>In progress</strong> - Scheduled maintenance is currently '
        "in progress. The replica is drained and in maintenance mode; queries routed to it "
        "directly will stall or be refused. Use the wh-ro endpoint. Ref INC-20417.</p>"
        '<p class="update">Scheduled for May 14, 02:00 - 04:00 UTC</p></div>'
    )
    script = (
        "window.statusConfig="
        + json.dumps({"page": "ops-internal", "refresh": 60, "components": len(_COMPONENTS)})
        + ";"
        "(function(){var s=document.createElement('script');s.src='/assets/app.js';"
        "document.head.appendChild(s)})();"
    )
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        "<title>Internal Status - ops</title>"
        f"<style>{_CSS}</style><script>{script}</script></head><body>"
        '<header><div class="container"><a href="/">Internal Status</a> '
        '<nav><a href="/history">History</a> <a href="/subscribe">Subscribe</a></nav>'
        '</div></header><main class="container">'
        '<div class="page-status"><h2>Some systems are under maintenance</h2></div>'
        f"<h3>Scheduled Maintenance</h3>{maintenance}"
        f'<h3>Components</h3><div class="components">{"".join(rows)}</div>'
        f"<h3>Past Incidents</h3>{''.join(past)}</main>"
        '<footer class="container">Powered by statuspage-lite 3.2 - '
        "times in UTC</footer></body></html>"
    )


def incidents_html(rng: random.Random) -> str:
    """The warehouse incidents list with the INC-20417 timeline."""
    items = []
    number = 20417
    for k in range(12):
        when = datetime(2024, 5, 14, 2, 0) - timedelta(days=6 * k + rng.randint(0, 5) * (k > 0))
        if k == 0:
            updates = [
                (
                    "03:58",
                    "Completed",
                    "The maintenance has been completed; the replica is back in the wh-ro pool.",
                ),
                (
                    "02:41",
                    "Update",
                    "Firmware upgrade on the second volume. Queries sent to "
                    "wh-replica-3.internal directly are paused until the volume is back.",
                ),
                (
                    "02:00",
                    "In progress",
                    "The replica was drained from wh-ro and placed in "
                    "maintenance mode (new statements wait; cancel requests refused with 57P03).",
                ),
                (
                    "May 10 11:20",
                    "Scheduled",
                    "Storage firmware upgrade of wh-replica-3, "
                    "May 14 02:00 - 04:00 UTC. Clients using wh-ro.internal are not affected.",
                ),
            ]
            title = "Warehouse replica wh-replica-3: storage firmware upgrade"
        else:
            number -= rng.randint(3, 30)
            replica = rng.choice(["wh-primary", "wh-replica-1", "wh-replica-2", "wh-replica-4"])
            title = rng.choice(
                [
                    f"{replica}: replication lag above 60s",
                    f"{replica}: vacuum freeze running long",
                    f"{replica}: minor version upgrade",
                    "wh-ro: connection resets during failover",
                ]
            )
            updates = [
                (
                    f"{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}",
                    "Resolved",
                    "Lag back under 5s; monitoring." if "lag" in title else "Completed.",
                ),
                (
                    f"{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}",
                    "Investigating",
                    "We are looking into reports of slow queries on the warehouse.",
                ),
            ]
        ident = "INC-20417" if k == 0 else f"INC-{number}"
        body = "".join(
            f'<li class="update"><time>{at}</time> <strong>{state}</strong> - {text}</li>'
            for at, state, text in updates
        )
        items.append(
            f'<article class="incident" id="{ident}"><h2>{title}</h2>'
            f'<p class="meta">{ident} - {when.strftime("%b %d, %Y")} - component: warehouse'
            f"</p><ul>{body}</ul></article>"
        )
    return (
        '<!DOCTYPE html><html><head><meta charset="utf-8"><title>Incidents: warehouse'
        f"</title><style>{_CSS}</style></head><body><header>Internal Status</header>"
        f'<main class="container"><h1>Incidents - warehouse</h1>{"".join(items)}</main>'
        "<footer>times in UTC</footer></body></html>"
    )


def runs_json(rng: random.Random) -> str:
    """The scheduler's last 25 runs of nightly-report, minified; the first failed."""
    runs = []
    for k in range(25):
        day = datetime(2024, 5, 14) - timedelta(days=k)
        start = day.replace(hour=2, minute=0, second=1)
        failed = k == 0
        took = 1061 if failed else rng.randint(600, 760)
        ident = "r-7c1d2e" if failed else f"r-{rng.getrandbits(24):06x}"
        runs.append(
            {
                "id": ident,
                "job": "nightly-report",
                "state": "failed" if failed else "succeeded",
                "trigger": "schedule",
                "attempt": 1,
                "started_at": start.strftime("%Y-%m-%dT%H:%M:%SZ"),
                "finished_at": "2024-05-14T02:17:42Z"
                if failed
                else (start + timedelta(seconds=took)).strftime("%Y-%m-%dT%H:%M:%SZ"),
                "duration_s": took,
                "exit_code": 3 if failed else 0,
                "host": "ops-batch-01",
                "version": "2.7.1" if k < 4 else "2.6.4",
                "error": "RG-5031 warehouse query timed out" if failed else None,
                "retry_of": None,
                "annotations": {},
                "labels": [],
                "artifacts": []
                if failed
                else [
                    f"reports/daily/{day.strftime('%Y-%m-%d')}/{n}"
                    for n in ("revenue.pdf", "orders.csv", "signups.csv", "churn.csv")
                ],
                "log_url": f"https://scheduler.internal.example.com/runs/{ident}/log",
                "resources": {
                    "cpu_s": round(rng.uniform(300, 900), 1),
                    "max_rss_mb": rng.randint(500, 900),
                    "gpu": None,
                },
            }
        )
    return json.dumps(
        {"job": "nightly-report", "total": 412, "limit": 25, "next": None, "runs": runs},
        separators=(",", ":"),
    )


def replicas_json(rng: random.Random) -> str:
    """The warehouse's replicas (pretty-printed), wh-replica-3 in maintenance."""
    replicas = []
    for name in (
        "wh-primary",
        "wh-replica-1",
        "wh-replica-2",
        "wh-replica-3",
        "wh-replica-4",
        "wh-replica-5",
    ):
        maint = name == "wh-replica-3"
        replicas.append(
            {
                "name": name,
                "host": f"{name}.internal",
                "role": "primary" if name == "wh-primary" else "replica",
                "state": "maintenance" if maint else "streaming",
                "in_ro_pool": not maint and name != "wh-primary",
                "lag_ms": None if maint else rng.randint(0, 900),
                "version": "15.6",
                "zone": rng.choice(["eu-west-1a", "eu-west-1b", "eu-west-1c"]),
                "connections": {
                    "active": 0 if maint else rng.randint(5, 80),
                    "idle": rng.randint(0, 20),
                    "max": 400,
                },
                "maintenance": {
                    "incident": "INC-20417",
                    "window_start": "2024-05-14T02:00:00Z",
                    "window_end": "2024-05-14T04:00:00Z",
                    "mode": "paused",
                }
                if maint
                else None,
                "tags": [],
                "notes": "",
            }
        )
    return json.dumps(
        {"cluster": "analytics-wh", "replicas": replicas, "generated_at": "2024-05-14T07:41:09Z"},
        indent=2,
    )


def grafana_json(rng: random.Random) -> str:
    """Warehouse latency p95 per replica over 12 hours, minified."""
    times = [1715644800000 + 120_000 * i for i in range(240)]
    frames = []
    for name in ("wh-ro", "wh-replica-1", "wh-replica-2", "wh-replica-4"):
        values = [
            round(rng.uniform(12, 80) * (1.8 if 60 <= i <= 80 else 1), 1) for i in range(len(times))
        ]
        frames.append(
            {
                "schema": {
                    "name": f"p95 {name}",
                    "fields": [
                        {"name": "time", "type": "time"},
                        {"name": "value", "type": "number", "labels": {"replica": name}},
                    ],
                },
                "data": {"values": [times, values]},
            }
        )
    return json.dumps({"results": {"A": {"status": 200, "frames": frames}}}, separators=(",", ":"))


def ps_aux(rng: random.Random) -> str:
    """``ps aux`` on the batch host (no reportgen process left)."""
    commands = [
        "/usr/lib/systemd/systemd --system --deserialize 31",
        "[kthreadd]",
        "[rcu_gp]",
        "/usr/sbin/sshd -D",
        "/usr/sbin/cron -f -P",
        "/usr/sbin/rsyslogd -n -iNONE",
        "/usr/bin/node_exporter --collector.systemd",
        "nginx: master process /usr/sbin/nginx",
        "nginx: worker process",
        "/opt/etl-loader/venv/bin/python -m etl_loader.worker",
        "/opt/dashboards/venv/bin/gunicorn dashboards.wsgi -w 4",
        "/usr/bin/containerd",
        "/usr/bin/dockerd -H fd://",
        "/usr/lib/postgresql/15/bin/pgbouncer /etc/pgbouncer.ini",
        "sshd: ops [priv]",
        "-bash",
        "/usr/bin/python3 /usr/local/bin/sync-logs --every 300",
        "/opt/auth-proxy/bin/oauth2-proxy --config /etc/auth-proxy.cfg",
    ]
    lines = ["USER         PID %CPU %MEM    VSZ   RSS TTY      STAT START   TIME COMMAND"]
    pid = 1
    for n in range(150):
        cmd = commands[n] if n < 4 else rng.choice(commands)
        if cmd.startswith("["):
            cmd = rng.choice(
                [
                    "[kworker/u16:2-events_unbound]",
                    "[ksoftirqd/3]",
                    "[migration/1]",
                    "[jbd2/nvme0n1p1-8]",
                    "[xfsaild/nvme1n1]",
                ]
            )
        user = "root" if n < 40 else rng.choice(["root", "www-data", "etl", "dashboards", "ops"])
        lines.append(
            f"{user:<10} {pid:>6} {rng.uniform(0, 4):4.1f} {rng.uniform(0, 3):4.1f} "
            f"{rng.randint(0, 2_500_000):>7} {rng.randint(0, 400_000):>6} "
            f"{'?':<8} {rng.choice(['Ss', 'S', 'Sl', 'I<', 'R'])}    May13 "
            f"{rng.randint(0, 59)}:{rng.randint(0, 59):02d} {cmd}"
        )
        pid += rng.randint(1, 300)
    return "\n".join(lines) + "\n"


def warehouse_log(rng: random.Random) -> str:
    """The shared warehouse client log (pgbouncer-style) from 00:00 to 04:30."""
    clients = [
        ("etl-loader", "wh-ro.internal"),
        ("dashboards", "wh-ro.internal"),
        ("reportgen", "wh-replica-3.internal"),
        ("adhoc", "wh-ro.internal"),
    ]
    t = datetime(2024, 5, 14, 0, 0, 4)
    lines = []
    while t < datetime(2024, 5, 14, 4, 30):
        app, host = rng.choice(clients)
        if app == "reportgen" and not (t.hour == 2 and t.minute < 20):
            app, host = "dashboards", "wh-ro.internal"
        stamp = t.strftime("%Y-%m-%d %H:%M:%S.") + f"{rng.randint(0, 999):03d} UTC"
        kind = rng.random()
        if app == "reportgen" and t >= datetime(2024, 5, 14, 2, 2):
            waited = int((t - datetime(2024, 5, 14, 2, 2, 42)).total_seconds())
            text = (
                "server notice: replica in maintenance mode, statement queued "
                f"(backend_pid=88213 waited={waited}s)"
            )
        elif kind < 0.55:
            text = (
                f"stats: {rng.randint(40, 400)} xacts/s, {rng.randint(80, 900)} queries/s, "
                f"in {rng.randint(10, 900)} KB/s, out {rng.randint(100, 9000)} KB/s, "
                f"xact {rng.randint(300, 9000)} us, query {rng.randint(200, 8000)} us, "
                f"wait {rng.randint(0, 400)} us"
            )
        elif kind < 0.8:
            text = (
                f"C-{rng.getrandbits(32):08x}: analytics/svc_{app.replace('-', '_')}@"
                f"10.40.{rng.randint(0, 9)}.{rng.randint(2, 250)}:{rng.randint(30000, 60000)} "
                f"login attempt: db=analytics user=svc_{app.replace('-', '_')} tls=TLSv1.3"
            )
        elif kind < 0.95:
            text = (
                f"S-{rng.getrandbits(32):08x}: analytics/svc_{app.replace('-', '_')}@"
                f"{host}:5432 new connection to server (from 10.40.0.{rng.randint(2, 250)}"
                f":{rng.randint(30000, 60000)})"
            )
        else:
            text = (
                f"C-{rng.getrandbits(32):08x}: analytics/svc_{app.replace('-', '_')}: "
                "closing because: client close request (age=" + f"{rng.randint(1, 3600)}s)"
            )
        lines.append(f"{stamp} [{rng.randint(900, 999)}] LOG {app}: {text}")
        t += timedelta(seconds=rng.randint(45, 130))
    return "\n".join(lines) + "\n"


def runbook_md() -> str:
    """The job's runbook; the escalation channel is in the middle."""
    codes = "\n".join(
        f"| RG-{code} | {what} | {action} |"
        for code, what, action in [
            ("2001", "config file missing or invalid", "check `config/reportgen.yaml` syntax"),
            ("2004", "unknown query id in outputs", "compare `outputs` with `sql/`"),
            ("3002", "FX rates unavailable", "retry after fx.internal recovers"),
            ("4010", "template rendering failed", "check template and fonts bundle"),
            ("4012", "chart backend crashed", "re-run; report if repeated"),
            ("5001", "warehouse connection refused", "check the warehouse host and network"),
            ("5017", "warehouse authentication failed", "rotate `warehouse.pass` via Vault"),
            (
                "5031",
                "warehouse query timed out",
                "check the replica named in the log on the status page; use the wh-ro endpoint",
            ),
            ("5040", "result larger than prefetch limit", "raise `prefetch_rows`"),
            ("6002", "output checksum mismatch", "delete the day's folder and re-run"),
        ]
    )
    filler = "\n".join(
        f"- {item}"
        for item in [
            "The job runs on ops-batch-01 as user `reportgen` from cron at 02:00 UTC.",
            "Runs usually take 10 to 13 minutes; the scheduler alerts after 3 hours.",
            "Queries run 4 at a time; each has its own timeout (`query_timeout_s`).",
            "Outputs are written to a temporary name and renamed when complete.",
            "Metrics go to the pushgateway every minute (`reportgen_*` series).",
            "Failures post the last 40 log lines to #reports-nightly.",
        ]
    )
    return f"""# Runbook: nightly-report (reportgen)

Owner: data-platform. Last reviewed: 2024-04-22.

## Overview

{filler}

The report has four outputs per day under `reports/daily/<date>/`: `revenue.pdf`,
`orders.csv`, `signups.csv` and `churn.csv`. The PDF depends on eight queries (see
`outputs.daily.files` in the config); the CSVs on one query each. Business users read the
PDF at 08:00 UTC, so a failed night must be re-run before then.

## Dependencies

| Dependency | How it is reached | Status |
|------------|-------------------|--------|
| Warehouse | `warehouse.host`, normally `wh-ro.internal` (load-balanced) | status page |
| FX rates | https://fx.internal.example.com/rates | status page, "FX Rates Service" |
| Pushgateway | http://pushgateway.internal.example.com:9091 | Grafana "batch" dashboard |
| Slack | webhook in Vault `kv/ops/slack` | - |

## Error codes

| Code | Meaning | What to do |
|------|---------|------------|
{codes}

Exit codes: 0 success, 2 config, 3 query failed, 4 rendering, 5 lock held.

## Re-running a failed night

1. Find the failed run in the scheduler and the `RG-` code in the job log.
2. Fix the cause first (config, replica, credentials). A re-run against the same broken
   dependency fails the same way and holds the warehouse for another `query_timeout_s`.
3. A run that died on a fatal error leaves its lock behind. Check `run/reportgen/` and
   remove the stale lock before re-running; the wrapper refuses to start while it exists
   (exit code 5).
4. Run `reportgen run --date <date>` as user `reportgen` on ops-batch-01, or press
   "Re-run" in the scheduler UI (it runs the same command).
5. Check that the four outputs exist and their checksums are recorded.

## Escalation

During business hours ask in #data-platform. Out of hours, or when the PDF will not be
ready by 08:00 UTC, page the data platform on-call in #data-platform-oncall (the bot
there pages the primary). For warehouse incidents also post in #warehouse-ops.

## History

- 2024-03-02: RG-5017 after a credentials rotation; fixed by re-reading the secret.
- 2024-03-28: RG-4012 chart backend crash; matplotlib pinned.
- 2024-04-19: RG-5001 during a network change; re-run at 05:10.

## Notes

Do not raise `query_timeout_s` to work around slow queries: find the slow replica or the
plan regression instead. The daily_revenue_rollup query is the heaviest (3-4 minutes on
wh-ro).
"""
