"""ncm-migrate against plain Alembic, side by side, on the same generated histories.

    .venv/bin/python benchmarks/run.py                  # the full run (~15 min on 2 cores, an estimate)
    .venv/bin/python benchmarks/run.py --smoke --no-postgres --results /tmp/r.md

Every measurement is a real subprocess, as users run the tools (`python manage.py ...`,
`python -m alembic ...`), so interpreter start-up and imports count. Each variant gets one
untimed warm-up run, then `--repeat` timed runs interleaved with the other variants of its
scenario (so a busy machine slows both sides alike); the report gives medians of wall time
and of peak RSS (from `wait4`: the largest process of the command's tree), and the ratios
ncm-migrate / Alembic. Databases are reset before every run and checked after it (heads
reached, and for ncm-migrate every revision in the ledger exactly once).
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path

import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parent))
from generate import Generated, generate

HERE = Path(__file__).resolve().parent
PY = sys.executable
PG_ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"


@dataclass(frozen=True)
class Sizes:
    listing_services: int = 50
    listing_revisions: int = 100
    apply_revisions: int = 1000
    parallel_services: int = 8
    parallel_revisions: int = 20
    sleep_s: float = 0.05
    contenders: int = 8
    contention_revisions: int = 200
    scale_services: int = 200  # the graph's scale: scale_services x listing_revisions
    small_revisions: int = 5  # one small service, from empty and with nothing to do


SMOKE = Sizes(3, 6, 12, 2, 2, 0.01, 3, 8, scale_services=6, small_revisions=3)


@dataclass
class Sample:
    wall_s: float
    rss_kib: int
    codes: tuple[int, ...]
    cpu_s: float = 0.0


@dataclass
class Variant:
    """One command to time; `setup` runs before each run, `check` after it (both untimed)."""

    label: str
    cmd: list[str]
    cwd: Path
    side: str = "ncm"
    setup: Callable[[], None] | None = None
    check: Callable[[Sample], None] | None = None
    concurrent: int = 1
    versus: str = ""  # the label of the variant its ratios are against (default: the scenario's)
    samples: list[Sample] = field(default_factory=list)

    @property
    def wall(self) -> float:
        return statistics.median(s.wall_s for s in self.samples)

    @property
    def cpu(self) -> float:
        return statistics.median(s.cpu_s for s in self.samples)

    @property
    def rss_mib(self) -> float:
        return statistics.median(s.rss_kib for s in self.samples) / 1024

    @property
    def shell(self) -> str:
        cmd = " ".join(_short(c) for c in self.cmd)
        where = f"cd {_short(str(self.cwd))} && "
        return where + (f"({cmd}) x{self.concurrent} at once" if self.concurrent > 1 else cmd)


@dataclass
class Scenario:
    key: str
    title: str
    what: str
    variants: list[Variant]
    notes: list[str] = field(default_factory=list)

    def get(self, label: str) -> Variant:
        return next(v for v in self.variants if v.label == label)


# -- running ---------------------------------------------------------------------------


def _env() -> dict[str, str]:
    """The environment of every timed command: Python's defaults, so both tools read and
    write bytecode caches as they do for users (PYTHONDONTWRITEBYTECODE, set on some
    machines and images, would make every import compile its module every time)."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("NCM_") and k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPATH"] = str(HERE.parent)
    return env


def run_once(variant: Variant, log_dir: Path) -> Sample:
    if variant.setup is not None:
        variant.setup()
    procs = []
    logs = []
    start = time.perf_counter()
    for n in range(variant.concurrent):
        out = (log_dir / f"{_slug(variant.label)}.{n}.log").open("w")
        logs.append(out)
        procs.append(subprocess.Popen(variant.cmd, cwd=variant.cwd, env=_env(), stdout=out,
                                      stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL))
    codes = []
    rss = 0
    cpu = 0.0
    for proc in procs:
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        codes.append(proc.returncode)
        rss = max(rss, usage.ru_maxrss)
        cpu += usage.ru_utime + usage.ru_stime
    wall = time.perf_counter() - start
    for out in logs:
        out.close()
    sample = Sample(wall, rss, tuple(codes), cpu)
    if variant.check is not None:
        variant.check(sample)
    return sample


def measure(scenario: Scenario, repeat: int, warmup: int, log_dir: Path,
            say: Callable[[str], None]) -> None:
    """`warmup` untimed runs of each variant, then `repeat` rounds over all of them."""
    for _ in range(warmup):
        for variant in scenario.variants:
            run_once(variant, log_dir)
    for round_ in range(repeat):
        for variant in scenario.variants:
            variant.samples.append(run_once(variant, log_dir))
            last = variant.samples[-1]
            say(f"  [{scenario.key} {round_ + 1}/{repeat}] {variant.label}: "
                f"{last.wall_s:.3f}s wall, {last.cpu_s:.3f}s CPU")


def ok(label: str) -> Callable[[Sample], None]:
    def check(sample: Sample) -> None:
        if any(sample.codes):
            raise SystemExit(f"{label} exited {sample.codes}; see its log")

    return check


# -- databases -----------------------------------------------------------------------


def version_heads(url: str, table: str = "alembic_version") -> set[str]:
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            if not sa.inspect(conn).has_table(table):
                return set()
            return {r[0] for r in conn.execute(sa.text(f"SELECT version_num FROM {table}"))}
    finally:
        engine.dispose()


def ledger_counts(url: str, service: str) -> dict[str, int]:
    """How many `applied` up-rows each revision of `service` has in the ledger."""
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.text(
                "SELECT revision, count(*) FROM ncm_migrations WHERE service = :s "
                "AND direction = 'up' AND status = 'applied' GROUP BY revision"), {"s": service})
            return {r[0]: int(r[1]) for r in rows}
    finally:
        engine.dispose()


def check_applied(gen: Generated, ledger: bool, label: str) -> Callable[[Sample], None]:
    """Every service at head, and (ncm-migrate) each revision applied exactly once."""

    def check(sample: Sample) -> None:
        ok(label)(sample)
        for svc, url in zip(gen.services, gen.urls, strict=True):
            heads = version_heads(url)
            if heads != {gen.head}:
                raise SystemExit(f"{label}: {svc} is at {heads}, not {gen.head}")
            if ledger:
                counts = ledger_counts(url, svc)
                if len(counts) != gen.revisions or set(counts.values()) != {1}:
                    twice = sorted(r for r, n in counts.items() if n != 1)
                    raise SystemExit(f"{label}: {svc}'s ledger has {len(counts)} of "
                                     f"{gen.revisions} revisions; not exactly once: {twice[:5]}")

    return check


def fresh_sqlite(gen: Generated) -> Callable[[], None]:
    def reset() -> None:
        folder = gen.root / "var" / "db"
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)

    return reset


def fresh_pg(admin: str, name: str) -> Callable[[], None]:
    def reset() -> None:
        engine = sa.create_engine(admin, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
        with engine.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
        engine.dispose()

    return reset


def drop_pg(admin: str, name: str) -> None:
    engine = sa.create_engine(admin, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
    with engine.connect() as conn:
        conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    engine.dispose()


def pg_url(admin: str, name: str) -> str:
    return sa.engine.make_url(admin).set(database=name).render_as_string(hide_password=False)


def no_cache(gen: Generated) -> Callable[[], None]:
    def clear() -> None:
        shutil.rmtree(gen.root / "var" / "cache", ignore_errors=True)

    return clear


def no_bytecode(gen: Generated) -> Callable[[], None]:
    """Remove the revision files' bytecode caches: a fresh checkout, for Alembic."""
    def clear() -> None:
        for folder in (gen.root / "services").glob("*/migrations/__pycache__"):
            shutil.rmtree(folder, ignore_errors=True)

    return clear


def both(*steps: Callable[[], None]) -> Callable[[], None]:
    def run() -> None:
        for step in steps:
            step()

    return run


# -- scenarios -------------------------------------------------------------------------

GENERATED: list[str] = []


def make(out: Path, services: int, revisions: int, **kw: object) -> Generated:
    """`generate`, remembering the equivalent `benchmarks/generate.py` command line."""
    flags = {"branch_every": "--branch-every", "requires_every": "--requires-every",
             "sleep_s": "--sleep", "database_url": "--database-url"}
    args = [f"{flags[k]} {v!r}" if isinstance(v, str) else f"{flags[k]} {v}" for k, v in kw.items()]
    GENERATED.append(f"{_short(PY)} benchmarks/generate.py {_short(str(out))} --services {services} "
                     f"--revisions {revisions} {' '.join(args)}".rstrip())
    return generate(out, services, revisions, **kw)  # type: ignore[arg-type]



def manage(*args: str) -> list[str]:
    return [PY, "manage.py", *args]


def alembic(gen: Generated, service: str, *args: str) -> list[str]:
    return [PY, "-m", "alembic", "-c", str(gen.alembic_ini(service)), *args]


def listing(work: Path, sizes: Sizes, say: Callable[[str], None]) -> tuple[Scenario, Scenario]:
    gen = make(work / "listing", sizes.listing_services, sizes.listing_revisions,
                   branch_every=10, requires_every=10)
    say(f"listing: applying {len(gen.services)} x {gen.revisions} revisions once (untimed)")
    subprocess.run(manage("migrate", "-q"), cwd=gen.root, env=_env(), check=True)
    check_applied(gen, True, "setup")(Sample(0, 0, (0,)))
    side = [PY, str(HERE / "alembic_side.py")]
    status = Variant(f"plain Alembic: load {len(gen.services)} dirs + current heads, one process",
                     [*side, "status", str(gen.root)], gen.root, "alembic", check=ok("alembic"))
    listing = Scenario(
        "listing",
        f"Listing: showmigrations over {len(gen.services)} services x {gen.revisions} revisions (SQLite)",
        "Every revision applied. Histories fork and merge every 10 revisions; every 10th "
        "revision of a service requires the previous service's. Warm rows: both tools with "
        "their caches (ncm-migrate's header cache, Python's bytecode caches). Cold rows: a "
        "fresh checkout for each (no header cache; no `__pycache__` in the revision folders, "
        "so Alembic compiles and writes 5,000 of them). The reference row imports the "
        "libraries ncm-migrate is built on and does nothing else: the floor of any command.",
        [
            Variant("ncm showmigrations (warm header cache)", manage("showmigrations"),
                    gen.root, check=ok("showmigrations")),
            Variant("ncm showmigrations --json (warm header cache)",
                    manage("showmigrations", "--json"), gen.root, check=ok("showmigrations")),
            Variant("ncm showmigrations (cold: no header cache)", manage("showmigrations"),
                    gen.root, setup=no_cache(gen), check=ok("showmigrations")),
            status,
            Variant("plain Alembic, cold (no bytecode caches for the revision files)",
                    status.cmd, gen.root, "alembic", setup=no_bytecode(gen),
                    check=ok("alembic")),
            Variant("reference: only importing SQLAlchemy, Dynaconf, Typer and Rich",
                    [PY, "-c", "import sqlalchemy, dynaconf, typer, rich.console"], gen.root,
                    "reference", check=ok("imports")),
        ],
    )
    noop = Scenario(
        "noop",
        f"No-op migrate over {len(gen.services)} x {gen.revisions} (everything applied, SQLite)",
        "What a deploy pays every time.",
        [
            Variant("ncm migrate (nothing to do, warm header cache)", manage("migrate"), gen.root,
                    check=ok("migrate")),
            Variant("ncm migrate (nothing to do, cold: no header cache)", manage("migrate"),
                    gen.root, setup=no_cache(gen), check=ok("migrate")),
            Variant(status.label, status.cmd, gen.root, "alembic", check=ok("alembic")),
            Variant(f"plain Alembic: command.upgrade(head) x{len(gen.services)}, one process",
                    [*side, "upgrade", str(gen.root)], gen.root, "alembic", check=ok("alembic")),
        ],
    )
    return listing, noop


def one_service(
    work: Path, scenario: str, revisions: int, database: str, admin: str
) -> tuple[Generated, Callable[[], None]]:
    """A one-service monorepo on `database` and what gives it a fresh database (on
    PostgreSQL the database `ncm_bench_<scenario>`, dropped at the end of the run)."""
    if database == "sqlite":
        gen = make(work / f"{scenario}-sqlite", 1, revisions)
        return gen, fresh_sqlite(gen)
    name = f"ncm_bench_{scenario}"
    gen = make(work / f"{scenario}-pg", 1, revisions, database_url=pg_url(admin, name))
    return gen, fresh_pg(admin, name)


def applying(work: Path, sizes: Sizes, database: str, admin: str) -> list[Scenario]:
    """1 x N from empty, twice: as a fresh checkout (no header cache, no bytecode caches of
    the revision files, for either tool) and with both tools' caches warm."""
    n = sizes.apply_revisions
    gen, reset = one_service(work, "apply", n, database, admin)
    svc = gen.services[0]
    what = (
        "A fresh database before every run. ncm-migrate: one transaction per revision with "
        "its version-table and ledger rows, under the service's lock, checksums recorded. "
        "Alembic: the generic env.py, `-x tpm=1` for transaction_per_migration. "
    )
    scenarios = []
    for key, title, note, ncm_setup, alembic_setup in (
        ("", "a fresh checkout",
         "Before each run, as in a fresh checkout or a new container: no header cache and no "
         "`__pycache__` in the revision folder, for both tools (each imports, so compiles, "
         "every revision it applies).",
         both(reset, no_cache(gen), no_bytecode(gen)), both(reset, no_bytecode(gen))),
        ("-warm", "warm caches",
         "Both tools with their caches from the previous run (ncm-migrate's header cache, "
         "the revision files' bytecode): a developer recreating a database.",
         reset, reset),
    ):
        scenarios.append(Scenario(
            f"apply-{database}{key}",
            f"Applying: 1 service x {n} revisions from empty ({database}, {title})",
            what + note,
            [
                Variant("ncm migrate", manage("migrate"), gen.root, setup=ncm_setup,
                        check=check_applied(gen, True, "migrate")),
                Variant("alembic upgrade head (one transaction)",
                        alembic(gen, svc, "upgrade", "head"), gen.root, "alembic",
                        setup=alembic_setup, check=check_applied(gen, False, "alembic")),
                Variant("alembic upgrade head (transaction_per_migration)",
                        alembic(gen, svc, "-x", "tpm=1", "upgrade", "head"), gen.root, "alembic",
                        setup=alembic_setup, check=check_applied(gen, False, "alembic")),
            ],
        ))
    return scenarios


def parallel(work: Path, sizes: Sizes) -> Scenario:
    gen = make(work / "parallel", sizes.parallel_services, sizes.parallel_revisions,
                   sleep_s=sizes.sleep_s)
    reset = fresh_sqlite(gen)
    k = len(gen.services)
    singles = [
        Variant(f"ncm migrate {svc} (one service alone)", manage("migrate", svc), gen.root,
                setup=reset, check=ok("migrate"))
        for svc in gen.services
    ]
    return Scenario(
        "parallel",
        f"Parallel: {k} independent services x {gen.revisions} I/O-bound revisions (SQLite)",
        f"Each upgrade sleeps {sizes.sleep_s}s (so one service is ~"
        f"{gen.revisions * sizes.sleep_s:.1f}s of waiting). Fresh databases before every run.",
        [
            *singles,
            Variant("ncm migrate --jobs 1", manage("migrate", "--jobs", "1"), gen.root,
                    setup=reset, check=check_applied(gen, True, "--jobs 1")),
            Variant(f"ncm migrate --jobs {k}", manage("migrate", "--jobs", str(k)), gen.root,
                    setup=reset, check=check_applied(gen, True, f"--jobs {k}")),
            Variant(f"alembic upgrade head ({gen.services[0]} alone)",
                    alembic(gen, gen.services[0], "upgrade", "head"), gen.root, "alembic",
                    setup=reset, check=ok("alembic")),
        ],
    )


def contention(work: Path, sizes: Sizes, database: str, admin: str) -> Scenario:
    n, c = sizes.contention_revisions, sizes.contenders
    gen, reset = one_service(work, "contention", n, database, admin)
    variants = [
        Variant("ncm migrate (one process)", manage("migrate"), gen.root, setup=reset,
                check=check_applied(gen, True, "migrate")),
        Variant(f"ncm migrate x{c} at once", manage("migrate"), gen.root, setup=reset,
                check=check_applied(gen, True, f"migrate x{c}"), concurrent=c),
    ]
    scenario = Scenario(
        f"contention-{database}",
        f"Contention: {c} concurrent `migrate` processes on one database, 1 x {n} revisions "
        f"({database})",
        "Checked after every run: all exit 0, the service at head, every revision in the "
        "ledger exactly once.",
        variants,
    )
    if database != "sqlite":
        scenario.variants.append(Variant(
            f"alembic upgrade head x{c} at once (no lock; exit codes recorded)",
            alembic(gen, gen.services[0], "upgrade", "head"), gen.root, "alembic", setup=reset,
            concurrent=c))
    return scenario


# PostgreSQL databases the run creates (all named ncm_bench_*), dropped at its end.
PG_DATABASES: list[str] = []


def alembic_status(gen: Generated) -> Variant:
    """Plain Alembic's listing of `gen`, one process (`alembic_side.py status`)."""
    return Variant(f"plain Alembic: load {len(gen.services)} dirs + current heads, one process",
                   [PY, str(HERE / "alembic_side.py"), "status", str(gen.root)], gen.root,
                   "alembic", check=ok("alembic"))


def listing_pg(work: Path, sizes: Sizes, admin: str, say: Callable[[str], None]) -> Scenario:
    """The listing over PostgreSQL: one database per service (`ncm_bench_list_svc_NN`),
    created once and everything applied (untimed), then listed by both tools."""
    url = pg_url(admin, "ncm_bench_list_SERVICE").replace("SERVICE", "{service}")
    gen = make(work / "listing-pg", sizes.listing_services, sizes.listing_revisions,
               branch_every=10, requires_every=10, database_url=url)
    for svc in gen.services:
        PG_DATABASES.append(f"ncm_bench_list_{svc}")
        fresh_pg(admin, PG_DATABASES[-1])()
    say(f"listing-postgresql: applying {len(gen.services)} x {gen.revisions} revisions once "
        "(untimed)")
    subprocess.run(manage("migrate", "-q"), cwd=gen.root, env=_env(), check=True)
    check_applied(gen, True, "setup")(Sample(0, 0, (0,)))
    return Scenario(
        "listing-postgresql",
        f"Listing: showmigrations over {len(gen.services)} services x {gen.revisions} "
        f"revisions (PostgreSQL, {len(gen.services)} databases)",
        "The listing's histories, each service in its own PostgreSQL database on one server "
        "(a connection per database for both tools). Both tools with their caches.",
        [
            Variant("ncm showmigrations (warm header cache)", manage("showmigrations"),
                    gen.root, check=ok("showmigrations")),
            alembic_status(gen),
        ],
    )


def scale(work: Path, sizes: Sizes, say: Callable[[str], None]) -> Scenario:
    """The listing's shape with `scale_services` services: cost should grow linearly."""
    gen = make(work / "scale", sizes.scale_services, sizes.listing_revisions,
               branch_every=10, requires_every=10)
    say(f"scale: applying {len(gen.services)} x {gen.revisions} revisions once (untimed)")
    subprocess.run(manage("migrate", "-q"), cwd=gen.root, env=_env(), check=True)
    check_applied(gen, True, "setup")(Sample(0, 0, (0,)))
    return Scenario(
        "scale",
        f"Scale: showmigrations over {len(gen.services)} services x {gen.revisions} revisions "
        "(SQLite)",
        f"The listing's histories (forks, merges, cross-service `requires`), "
        f"{sizes.scale_services / sizes.listing_services:g} times as many services; both tools "
        "with their caches. Compare with the listing's warm row.",
        [
            Variant("ncm showmigrations (warm header cache)", manage("showmigrations"),
                    gen.root, check=ok("showmigrations")),
            alembic_status(gen),
        ],
    )


def small(work: Path, sizes: Sizes, database: str, admin: str) -> Scenario:
    """One small service: `migrate` from empty and with nothing to do, against `alembic
    upgrade head` doing the same (a deploy's fixed cost)."""
    gen, reset = one_service(work, "small", sizes.small_revisions, database, admin)
    if database != "sqlite":
        PG_DATABASES.append("ncm_bench_small")
    svc = gen.services[0]

    def applied_by(cmd: list[str]) -> Callable[[], None]:
        def setup() -> None:
            reset()
            subprocess.run(cmd, cwd=gen.root, env=_env(), check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        return setup

    upgrade = alembic(gen, svc, "upgrade", "head")
    return Scenario(
        f"small-{database}",
        f"One small service: 1 x {gen.revisions} revisions ({database})",
        "From empty: a fresh database before every run. Nothing to do: the same database "
        "brought to head by the same tool before every run (untimed). Both tools with their "
        "caches; Alembic's generic env.py, one transaction.",
        [
            Variant("ncm migrate (from empty)", manage("migrate"), gen.root, setup=reset,
                    check=check_applied(gen, True, "migrate")),
            Variant("alembic upgrade head (from empty)", upgrade, gen.root, "alembic",
                    setup=reset, check=check_applied(gen, False, "alembic")),
            Variant("ncm migrate (nothing to do)", manage("migrate"), gen.root,
                    setup=applied_by(manage("migrate", "-q")),
                    versus="alembic upgrade head (nothing to do)",
                    check=check_applied(gen, True, "migrate")),
            Variant("alembic upgrade head (nothing to do)", upgrade, gen.root, "alembic",
                    setup=applied_by(upgrade), check=check_applied(gen, False, "alembic")),
        ],
    )


# -- report ------------------------------------------------------------------------------


@dataclass
class Target:
    what: str
    measured: str
    met: bool


def _ratio(a: Variant, b: Variant) -> str:
    return f"{a.wall / b.wall:.2f}x ({a.wall:.3f} s / {b.wall:.3f} s)"


def _faster(a: Variant, b: Variant) -> str:
    return f"{b.wall / a.wall:.2f}x ({b.wall:.3f} s / {a.wall:.3f} s)"


def targets(scenarios: dict[str, Scenario]) -> list[Target]:
    """Issue 18's targets ("Speed, round two"), each from the run's medians."""
    out: list[Target] = []
    for key, times, memory in (("listing", 3, 100), ("noop", 4, 100),
                               ("listing-postgresql", 3, None)):
        sc = scenarios.get(key)
        if sc is None:
            continue
        ncm = sc.variants[0]
        base = next(v for v in sc.variants if v.label.startswith("plain Alembic: load"))
        out.append(Target(f"{key}: at least {times}x faster than Alembic loading the same dirs",
                          _faster(ncm, base), base.wall >= times * ncm.wall))
        if memory is not None:
            out.append(Target(f"{key}: at most 1 s", f"{ncm.wall:.3f} s", ncm.wall <= 1.0))
            out.append(Target(f"{key}: peak memory under {memory} MiB", f"{ncm.rss_mib:.0f} MiB",
                              ncm.rss_mib < memory))
    sc = scenarios.get("scale")
    if sc is not None:
        ncm = sc.variants[0]
        base = scenarios.get("listing")
        if base is not None:
            out.append(Target("scale: at most 4.5x the listing's time",
                              _ratio(ncm, base.variants[0]),
                              ncm.wall <= 4.5 * base.variants[0].wall))
        out.append(Target("scale: peak memory under 150 MiB", f"{ncm.rss_mib:.0f} MiB",
                          ncm.rss_mib < 150))
    for db in ("sqlite", "postgresql"):
        sc = scenarios.get(f"small-{db}")
        if sc is None:
            continue
        for case in ("from empty", "nothing to do"):
            ncm = sc.get(f"ncm migrate ({case})")
            base = sc.get(f"alembic upgrade head ({case})")
            out.append(Target(f"one small service {db}, {case}: no slower than alembic upgrade "
                              "head", _ratio(ncm, base), ncm.wall <= base.wall))
    for db in ("sqlite", "postgresql"):
        for key, how in (("", "fresh checkout"), ("-warm", "warm caches")):
            sc = scenarios.get(f"apply-{db}{key}")
            if sc is None:
                continue
            ncm, single, tpm = sc.variants
            out.append(Target(f"apply {db} ({how}): no slower than Alembic's single transaction",
                              _ratio(ncm, single), ncm.wall <= single.wall))
            out.append(Target(
                f"apply {db} ({how}): no slower than Alembic transaction_per_migration",
                _ratio(ncm, tpm), ncm.wall <= tpm.wall))
    sc = scenarios.get("parallel")
    if sc is not None:
        singles = [v for v in sc.variants if v.label.endswith("(one service alone)")]
        longest = max(singles, key=lambda v: v.wall)
        jobs = next(v for v in sc.variants if v.label.startswith("ncm migrate --jobs")
                    and not v.label.endswith(" 1"))
        out.append(Target(f"parallel: {jobs.label.removeprefix('ncm migrate ')} at most 1.2x the "
                          "longest single service", _ratio(jobs, longest),
                          jobs.wall <= 1.2 * longest.wall))
    for db in ("sqlite", "postgresql"):
        sc = scenarios.get(f"contention-{db}")
        if sc is not None:
            alone, many = sc.variants[0], sc.variants[1]
            out.append(Target(f"contention {db}: {many.concurrent} runners, each revision once, "
                              "all exit 0", f"{len(many.samples)} runs checked", True))
            out.append(Target(f"contention {db}: {many.concurrent} runners at most 2x one alone",
                              _ratio(many, alone), many.wall <= 2.0 * alone.wall))
    return out


def machine() -> list[str]:
    cpu = "unknown"
    mem = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
                break
    except OSError:
        pass
    return [f"nproc {os.cpu_count()}", f"RAM {mem}", f"CPU {cpu}", platform.platform()]


def versions(admin: str | None) -> list[str]:
    out = [
        f"Python {platform.python_version()}",
        f"SQLAlchemy {version('SQLAlchemy')}",
        f"Alembic {version('alembic')}",
        f"ncm-migrate {version('ncm-migrate')}",
        f"SQLite {sqlite3.sqlite_version}",
    ]
    if admin:
        out.append(f"psycopg {version('psycopg')}")
        engine = sa.create_engine(admin, poolclass=sa.pool.NullPool)
        with engine.connect() as conn:
            out.append(f"PostgreSQL {conn.exec_driver_sql('SHOW server_version').scalar()}")
        engine.dispose()
    return out


def report(scenarios: list[Scenario], sizes: Sizes, args: argparse.Namespace, admin: str | None,
           started: datetime, loads: tuple[tuple[float, ...], tuple[float, ...]], took: float) -> str:
    by_key = {s.key: s for s in scenarios}
    lines = [
        "# Benchmarks: ncm-migrate against plain Alembic",
        "",
        f"Generated by `benchmarks/run.py` on {started:%Y-%m-%d %H:%M} UTC in {took / 60:.1f} min "
        f"({args.repeat} timed runs per variant after {_warmups(args)} warm-up; medians). How to run it and "
        "what was changed for speed: [README.md](README.md).",
        "",
        "**Machine:** " + "; ".join(machine()) + f". Load average at start "
        f"{', '.join(f'{x:.2f}' for x in loads[0])}, at end {', '.join(f'{x:.2f}' for x in loads[1])}"
        " (a shared machine: other work may have run alongside).",
        "",
        "**Versions:** " + "; ".join(versions(admin)) + ".",
        "",
        "## Targets",
        "",
        "| target | measured | met |",
        "| --- | --- | --- |",
    ]
    for t in targets(by_key):
        lines.append(f"| {t.what} | {t.measured} | {'yes' if t.met else '**no**'} |")
    for sc in scenarios:
        base = _baseline(sc)
        lines += ["", f"## {sc.title}", "", sc.what, "",
                  "| variant | wall (median) | min - max | CPU user+sys | peak RSS | wall vs Alembic "
                  "| CPU vs Alembic | exit codes |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        for v in sc.variants:
            walls = [s.wall_s for s in v.samples]
            b = sc.get(v.versus) if v.versus else base
            mine = b is not None and v.side == "ncm"
            ratio = f"{v.wall / b.wall:.2f}x" if mine and b else ""
            cpu_ratio = f"{v.cpu / b.cpu:.2f}x" if mine and b and b.cpu else ""
            codes = sorted({c for s in v.samples for c in s.codes})
            lines.append(f"| {v.label} | {v.wall:.3f} s | {min(walls):.3f} - {max(walls):.3f} s | "
                         f"{v.cpu:.3f} s | {v.rss_mib:.0f} MiB | {ratio} | {cpu_ratio} | "
                         f"{', '.join(map(str, codes))} |")
        if base is not None:
            lines += ["", f"Ratios are against: {base.label}"
                      + "".join(f"; {v.label} against {v.versus}" for v in sc.variants
                                if v.versus) + "."]
        lines += sc.notes
    lines += ["", "## Exact commands", "",
              "`$REPO` is the repository's root, `$TMP` the temporary folder the runner works in.",
              "", "```"]
    lines.append(f"cd $REPO && {_short(PY)} benchmarks/run.py " + " ".join(_argv(args)))
    lines.append("# the monorepos it generates (and runs `manage.py migrate -q` once in listing/)")
    lines += GENERATED
    for sc in scenarios:
        lines.append(f"# {sc.key}")
        lines += [v.shell for v in sc.variants if not v.label.startswith("ncm migrate svc_0")
                  or v.label.startswith("ncm migrate svc_00")]
    lines += ["```", "", f"Sizes: {sizes}.", ""]
    return "\n".join(lines)


def kept_sections(path: Path) -> str:
    """The sections of `path` that other benchmarks wrote (a `<!-- written by benchmarks/...`
    line under their heading, e.g. redis_batched_update.py's): rewriting the file keeps them."""
    if not path.exists():
        return ""
    sections: list[str] = []
    for line in path.read_text().splitlines(keepends=True):
        if line.startswith("## ") or not sections:
            sections.append("")
        sections[-1] += line
    kept = [s for s in sections if s.startswith("## ") and "\n<!-- written by benchmarks/" in s]
    return "".join("\n" + s.rstrip("\n") + "\n" for s in kept)


def _baseline(sc: Scenario) -> Variant | None:
    for prefix in ("plain Alembic: load", "alembic upgrade head (transaction_per_migration)",
                   "alembic upgrade head"):
        for v in sc.variants:
            if v.label.startswith(prefix) and "at once" not in v.label:
                return v
    return None


def _warmups(args: argparse.Namespace) -> str:
    n = args.warmup if args.warmup is not None else (0 if args.smoke else 1)
    return {0: "no", 1: "one"}.get(n, str(n))


def _argv(args: argparse.Namespace) -> list[str]:
    out = [f"--repeat {args.repeat}"]
    if args.smoke:
        out.append("--smoke")
    if args.no_postgres:
        out.append("--no-postgres")
    if args.only:
        out.append(f"--only {args.only}")
    return out


def _short(text: str) -> str:
    for path, name in ((str(HERE.parent), "$REPO"), (tempfile.gettempdir(), "$TMP")):
        text = text.replace(path, name)
    return text


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text)[:60]


# -- main --------------------------------------------------------------------------------

SCENARIOS = ("listing", "small", "apply", "parallel", "contention", "scale")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per variant (>= 1)")
    parser.add_argument("--warmup", type=int, default=None,
                        help="untimed runs per variant first (default 1, 0 with --smoke)")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, to check it works")
    parser.add_argument("--no-postgres", action="store_true", help="SQLite only")
    parser.add_argument("--pg-admin", default=os.environ.get("NCM_TEST_PG_URL", PG_ADMIN),
                        help="an admin URL on the server where databases are created")
    parser.add_argument("--only", default="", help=f"comma-separated subset of {SCENARIOS}")
    parser.add_argument("--work", type=Path, default=None, help="where monorepos are generated")
    parser.add_argument("--results", type=Path, default=HERE / "RESULTS.md")
    args = parser.parse_args(argv)
    sizes = SMOKE if args.smoke else Sizes()
    warmup = args.warmup if args.warmup is not None else (0 if args.smoke else 1)
    only = set(filter(None, args.only.split(","))) or set(SCENARIOS)
    admin = None if args.no_postgres else args.pg_admin
    work = args.work or Path(tempfile.mkdtemp(prefix="ncm-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    logs = work / "logs"
    logs.mkdir(exist_ok=True)
    started = datetime.now(UTC)
    load0 = os.getloadavg()
    t0 = time.perf_counter()

    def say(text: str) -> None:
        print(f"{time.perf_counter() - t0:7.1f}s {text}", flush=True)

    databases = ["sqlite"] + (["postgresql"] if admin else [])
    scenarios: list[Scenario] = []
    try:  # building a scenario may create databases already
        if "listing" in only:
            scenarios += listing(work, sizes, say)
            if admin:
                scenarios.append(listing_pg(work, sizes, admin, say))
        if "small" in only:
            scenarios += [small(work, sizes, db, admin or "") for db in databases]
        if "apply" in only:
            scenarios += [sc for db in databases for sc in applying(work, sizes, db, admin or "")]
        if "parallel" in only:
            scenarios.append(parallel(work, sizes))
        if "contention" in only:
            scenarios += [contention(work, sizes, db, admin or "") for db in databases]
        if "scale" in only:
            scenarios.append(scale(work, sizes, say))
        for sc in scenarios:
            say(f"{sc.key}: {sc.title}")
            measure(sc, args.repeat, warmup, logs, say)
    finally:
        if admin:
            for name in ("ncm_bench_apply", "ncm_bench_contention", *PG_DATABASES):
                drop_pg(admin, name)
    text = report(scenarios, sizes, args, admin, started, (load0, os.getloadavg()),
                  time.perf_counter() - t0)
    args.results.write_text(text + kept_sections(args.results))
    say(f"wrote {args.results}; monorepos and logs in {work}")
    for t in targets({s.key: s for s in scenarios}):
        say(f"{'met    ' if t.met else 'MISSED '} {t.what}: {t.measured}")
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
