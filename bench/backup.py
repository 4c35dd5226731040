"""B-9: backup and restore of a PostgreSQL database (1 GB by default) through Stackport against
the same done by hand, in the same run, into the same kind of restic repository.

Stackport: ``request_backup`` -> ``run_backup`` (a helper container of the postgres image runs
``pg_dump -Fc`` with its own compression, streamed into ``restic backup --stdin``); restore:
``request_restore`` -> ``run_restore`` in place (restic dump -> a fresh server of the same
image -> pg_restore, its data directory a folder of the live volume when it has room, then
the data renamed into place, the replaced data kept, and the database started again).

By hand: ``docker exec <db> pg_dump -Fc | restic backup --stdin`` into a repository of its
own; restore: ``restic dump | docker exec -i <db> pg_restore --clean`` into the running
database (no fresh server, no kept copy: the least a person would do).

Prints the times, the new bytes of a second backup of unchanged data, and as its last line
``backup ratio (stackport / by hand)`` (goal <= 1.2) with the restore ratio and the dedup figure.

    DJANGO_ENV=test DATABASE_URL=postgres://postgres:postgres@127.0.0.1:5432/stackport_bench \\
        .venv/bin/python bench/backup.py [--gb 1] [--runs 1]
"""

from __future__ import annotations

import argparse
import os
import secrets
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from _setup import BenchError, machine, median, note, stackport

VERSIONS = [("postgresql", "17")]
GOAL = 1.2
DEDUP_GOAL = 0.05


def db_container(bench: Any, env: Any) -> Any:
    client = bench.docker()
    found = [
        c
        for c in client.containers.list(filters={"label": [f"org.stackport.stack={env.key}"]})
        if "org.stackport.helper" not in c.labels
    ]
    if not found:
        raise BenchError("the database is not running")
    return found[0]


def password_of(container: Any) -> str:
    return dict(e.split("=", 1) for e in container.attrs["Config"]["Env"])["STACKPORT_DB_PASSWORD"]


def psql(container: Any, sql: str) -> str:
    result = container.exec_run(
        ["psql", "-h", "127.0.0.1", "-U", "app", "-d", "app", "-tAc", sql],
        environment={"PGPASSWORD": password_of(container)},
    )
    if result.exit_code != 0:
        raise BenchError(result.output.decode(errors="replace"))
    return str(result.output.decode().strip())


def fill(container: Any, gb: float) -> None:
    """``gb`` GB of rows (random-ish text, so compression and dedup have real work)."""
    rows = int(gb * 1024**3 / 1100)
    psql(container, "create table data (id bigint primary key, body text)")
    step = 500_000
    for start in range(0, rows, step):
        end = min(rows, start + step)
        psql(
            container,
            f"insert into data select g, repeat(md5(g::text) || md5((g * 7)::text), 16) || g "  # noqa: S608
            f"from generate_series({start + 1}, {end}) g",
        )
    size = psql(container, "select pg_size_pretty(pg_database_size('app'))")
    note(f"filled: {size}")


def by_hand(container: Any, repo: Path, password: str) -> tuple[float, float]:
    """(backup seconds, restore seconds) of the hand-made pipeline."""
    env = {"PATH": os.environ["PATH"], "RESTIC_PASSWORD": password, "HOME": str(repo.parent)}
    pw = password_of(container)
    started = time.perf_counter()
    subprocess.run(  # noqa: S602 - the benchmark's own fixed pipeline
        f"docker exec -e PGPASSWORD={pw} {container.name} pg_dump -h 127.0.0.1 -U app -d app -Fc "
        f"| restic -r {repo} --no-cache backup --stdin --stdin-filename db.dump --quiet",
        shell=True,
        check=True,
        env=env,
    )
    backup = time.perf_counter() - started
    started = time.perf_counter()
    subprocess.run(  # noqa: S602
        f"restic -r {repo} --no-cache dump latest /db.dump "
        f"| docker exec -i -e PGPASSWORD={pw} {container.name} "
        "pg_restore -h 127.0.0.1 -U app -d app --clean --if-exists --no-owner -1",
        shell=True,
        check=True,
        env=env,
    )
    return backup, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gb", type=float, default=1.0, help="database size in GB (default 1)")
    parser.add_argument("--runs", type=int, default=1, help="backups and restores a side (default 1)")
    args = parser.parse_args()
    with stackport(VERSIONS) as bench:
        from django.db import transaction

        from stacks import tasks
        from stacks.models import Backup, Operation, OperationStatus
        from stacks.runtime import backups

        # One process: what the tasks would run in the worker runs here, in order.
        tasks.run_backup_task.delay = backups.run_backup  # type: ignore[method-assign]
        tasks.restore_task.delay = backups.run_restore  # type: ignore[method-assign]
        rows = [{"name": "db", "component": "postgresql", "version": "17", "size": "large", "replicas": 1}]
        env = bench.create("Backup bench", components=rows)
        bench.run(env.operations.get())
        env.refresh_from_db()
        container = db_container(bench, env)
        fill(container, args.gb)
        print(f"backup and restore of a {args.gb:g} GB PostgreSQL database, {args.runs} run(s) a side")
        print(f"before: {machine()}")
        times: dict[str, list[float]] = {
            k: [] for k in ("sp_backup", "sp_restore", "hand_backup", "hand_restore")
        }
        hand_repo = Path(tempfile.mkdtemp(prefix="stackport-bench-restic-")) / "repo"
        hand_password = secrets.token_urlsafe(24)
        subprocess.run(  # noqa: S603
            ["restic", "-r", str(hand_repo), "init", "--quiet"],  # noqa: S607
            check=True,
            env={"PATH": os.environ["PATH"], "RESTIC_PASSWORD": hand_password},
        )
        # Stackport's repository made before the timing too (an organization's first backup
        # makes it once), as the hand-made one above.
        backups.ensure_repository(env.project.organization_id)
        added: list[int] = []
        for run in range(args.runs):
            # Stackport backup.
            started = time.perf_counter()
            with transaction.atomic():
                made = backups.request_backup(environment=env, actor=None)
            backups.run_backup(made[0].pk)
            times["sp_backup"].append(time.perf_counter() - started)
            backup = Backup.objects.get(pk=made[0].pk)
            if backup.status != Backup.Status.SUCCEEDED:
                raise BenchError(f"backup failed: {backup.error}")
            added.append(backup.added_bytes)
            note(
                f"stackport backup {run + 1}: {times['sp_backup'][-1]:.1f} s, "
                f"{backup.size_bytes >> 20} MiB dump"
            )
            # By hand.
            hand_backup, hand_restore = by_hand(db_container(bench, env), hand_repo, hand_password)
            times["hand_backup"].append(hand_backup)
            times["hand_restore"].append(hand_restore)
            note(f"by hand {run + 1}: backup {hand_backup:.1f} s, restore {hand_restore:.1f} s")
            # Untimed: the write-back the hand restore left behind (its checkpoint), which
            # Stackport's restore would otherwise pay for when it stops the database.
            done = db_container(bench, env).exec_run(
                ["psql", "-h", "/run/postgresql", "-U", "postgres", "-d", "postgres", "-c", "checkpoint"]
            )
            if done.exit_code != 0:
                raise BenchError(done.output.decode(errors="replace"))
            # Stackport restore, in place.
            started = time.perf_counter()
            with transaction.atomic():
                op = backups.request_restore(backup=backup, actor=None, confirmation="db")
            backups.run_restore(op.pk)
            times["sp_restore"].append(time.perf_counter() - started)
            op = Operation.objects.get(pk=op.pk)
            if op.status != OperationStatus.SUCCEEDED:
                raise BenchError(f"restore failed: {op.error}\n{op.log}")
            backups.settle_restore(operation=op, actor=None, undo=False)
            note(f"stackport restore {run + 1}: {times['sp_restore'][-1]:.1f} s\n{op.log}")
        # A second backup of unchanged data.
        with transaction.atomic():
            again = backups.request_backup(environment=env, actor=None)
        backups.run_backup(again[0].pk)
        second = Backup.objects.get(pk=again[0].pk)
        first = Backup.objects.filter(environment=env).order_by("id").first()
        assert first is not None
        share = second.added_bytes / max(first.added_bytes, 1)
        print(f"after: {machine()}")
        for key, values in times.items():
            print(f"{key:13s} median {median(values):7.1f} s  ({', '.join(f'{v:.1f}' for v in values)})")
        print(
            f"second backup of unchanged data: {second.added_bytes} new bytes of {first.added_bytes} "
            f"({share:.2%}, goal < {DEDUP_GOAL:.0%})"
        )
        backup_ratio = median(times["sp_backup"]) / median(times["hand_backup"])
        restore_ratio = median(times["sp_restore"]) / median(times["hand_restore"])
        print(
            f"backup ratio (stackport / by hand): {backup_ratio:.2f} (goal <= {GOAL}); "
            f"restore ratio {restore_ratio:.2f}; second backup new data {share:.2%} (goal < 5%)"
        )


if __name__ == "__main__":
    main()
