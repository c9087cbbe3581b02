"""Several real `recommender serve` processes over one real PostgreSQL, on loopback:
each with a data dir of its own (its index files are its own caches), as on
separate machines behind a load balancer."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from recommender.serving.engine import Engine
from recommender.settings import Settings
from tests.conftest import HASHING, CountingEmbedder, article
from tests.test_server import free_port, wait_until_ready

KEY = "replica-key"
AUTH = {"Authorization": f"Bearer {KEY}"}


@dataclass
class Replica:
    proc: subprocess.Popen
    client: httpx.Client

    def related(self, seed: str) -> list[str]:
        response = self.client.get(f"/v1/articles/{seed}/related", params={"k": 10})
        assert response.status_code == 200, response.text
        return [i["id"] for i in response.json()["items"]]

    def ready(self) -> dict:
        return self.client.get("/readyz").json()


def start_replica(database_url: str, data_dir: Path, **env_extra: str) -> Replica:
    port = free_port()
    # The default refresh period (1 s) on purpose: NOTIFY, not polling, makes writes visible sooner.
    # No model named: a new server takes the database's, and builds its index from the stored vectors.
    env = dict(os.environ, RECOMMENDER_DATA_DIR=str(data_dir), RECOMMENDER_DATABASE_URL=database_url,
               RECOMMENDER_API_KEYS=KEY, **env_extra)
    env.pop("RECOMMENDER_MODEL", None)
    proc = subprocess.Popen([sys.executable, "-m", "recommender.cli", "serve", "--port", str(port),
                             "--log-level", "warning"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    wait_until_ready(base, proc)
    return Replica(proc, httpx.Client(base_url=base, timeout=10))


def stop_all(replicas: list[Replica]) -> None:
    for r in replicas:
        r.client.close()
        if r.proc.poll() is None:
            r.proc.terminate()
    for r in replicas:
        r.proc.wait(timeout=15)


def load(database_url: str, data_dir: Path, stories: Path) -> None:
    settings = Settings(data_dir=data_dir, model=HASHING, database_url=database_url)
    engine = Engine(settings, embedder=CountingEmbedder())
    engine.ingest([str(stories)])
    engine.store.close()


@pytest.fixture
def replicas(pg_url, tmp_path, stories):
    load(pg_url, tmp_path / "loader", stories)
    started = [start_replica(pg_url, tmp_path / f"replica-{i}") for i in range(3)]
    yield started
    stop_all(started)


def wait_for(check, seconds: float, what: str) -> float:
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < seconds, f"{what} took over {seconds} s"
        time.sleep(0.01)
    return time.monotonic() - started


def lists_follow_every_change(url: str, ids_like: str, expected: int) -> bool:
    """The list worker's work, read from the database: a stored list for each of these
    articles, and the lists recorded to follow the whole change log."""
    import psycopg

    with psycopg.connect(url) as conn:
        stored = conn.execute("SELECT COUNT(*) FROM related_lists l JOIN articles a ON a.num = l.num "
                              "WHERE a.id LIKE %s", (ids_like,)).fetchone()[0]
        behind = conn.execute("SELECT (SELECT MAX(seq) FROM changes) - MAX(refreshed_seq) FROM list_progress"
                              ).fetchone()[0]
    return stored == expected and behind == 0


def test_every_replica_answers_each_route_as_one_server_does(replicas):
    answers = [r.client.get("/v1/articles/ukr-2/related").json() for r in replicas]
    assert answers[0]["items"] and all(a == answers[0] for a in answers)
    for path in ("/v1/articles/ukr-2", "/v1/articles/ukr-2/related.html", "/v1/articles/nope/related"):
        bodies = {(r.client.get(path).status_code, r.client.get(path).text) for r in replicas}
        assert len(bodies) == 1, path
    ready = [r.ready() for r in replicas]
    assert [r["model"] for r in ready] == [HASHING] * 3  # built from the database's vectors
    assert [r["list_worker"] for r in ready].count(True) == 1  # one list worker over one database


def test_a_write_through_one_replica_reaches_every_replicas_lists_within_a_second(replicas):
    follow_up = article("ukr-4", "Armistițiul din Marea Neagră, semnat la Istanbul",
                        "Ucraina și Rusia semnează armistițiul pe mare; porturile ucrainene exportă cereale.",
                        "2025-04-05T10:00:00+00:00")
    put = replicas[0].client.put("/v1/articles/ukr-4", json=follow_up, headers=AUTH)
    assert put.status_code == 200 and put.json()["status"] == "added"
    for other in replicas[1:]:
        wait_for(lambda r=other: "ukr-4" in r.related("ukr-3"), 1.0, "the write reaching another replica's list")
    assert replicas[2].client.delete("/v1/articles/ukr-4", headers=AUTH).status_code == 200
    for other in replicas[:2]:
        wait_for(lambda r=other: "ukr-4" not in r.related("ukr-3"), 1.0, "the delete reaching another replica")
        assert other.client.get("/v1/articles/ukr-4").status_code == 404


def test_the_list_worker_fails_over_when_its_replica_is_killed(replicas):
    leader = next(r for r in replicas if r.ready()["list_worker"])
    survivors = [r for r in replicas if r is not leader]
    leader.proc.send_signal(signal.SIGKILL)
    leader.proc.wait(timeout=10)
    killed_at = time.monotonic()
    late = article("fot-3", "Dinamo și FCSB, din nou în derby", "FCSB și Dinamo joacă derby-ul din Superliga.",
                   "2025-03-16T18:00:00+00:00", section="sport")
    assert survivors[0].client.put("/v1/articles/fot-3", json=late, headers=AUTH).status_code == 200
    # the older piece's stored list must show the new one: only a list worker puts it there
    wait_for(lambda: "fot-3" in survivors[1].related("fot-2"), 10.0, "failover of the list worker")
    assert sum(r.ready()["list_worker"] for r in survivors) == 1
    assert time.monotonic() - killed_at < 10


# --- a PostgreSQL server of the test's own, to stop, restart and replicate ---------------------

def _pg_bin() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
    return found[-1].parent if found else None


class Cluster:
    """A PostgreSQL server in a temporary directory, on a free port (trust auth, loopback)."""

    def __init__(self, bin_dir: Path, root: Path, port: int):
        self.bin, self.root, self.port = bin_dir, root, port

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def run(self, *args: str) -> None:
        command = [str(self.bin / args[0]), *args[1:]]
        if os.geteuid() == 0:  # PostgreSQL refuses to run as root
            command = ["runuser", "-u", "postgres", "--", *command]
        subprocess.run(command, check=True, capture_output=True, timeout=60)

    def start(self) -> None:
        self.run("pg_ctl", "-D", str(self.root / "data"), "-l", str(self.root / "log"), "-w", "start", "-o",
                 f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off")

    def stop(self, mode: str = "fast") -> None:
        self.run("pg_ctl", "-D", str(self.root / "data"), "-m", mode, "-w", "stop")


def new_root() -> Path:
    import shutil
    import tempfile

    root = Path(tempfile.mkdtemp(prefix="rec-pg-"))
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
    return root


@pytest.fixture
def own_postgres():
    bin_dir = _pg_bin()
    if bin_dir is None:
        if os.environ.get("RECOMMENDER_TEST_DATABASE_URL"):
            pytest.fail("PostgreSQL's server programs (pg_ctl, initdb) are not installed")
        pytest.skip("needs PostgreSQL's server programs (pg_ctl, initdb)")
    cluster = Cluster(bin_dir, new_root(), free_port())
    cluster.run("initdb", "-D", str(cluster.root / "data"), "-A", "trust", "-U", "postgres", "--no-sync")
    cluster.start()
    started = [cluster]
    yield cluster, started
    import shutil

    for c in started:
        try:
            c.stop("immediate")
        except subprocess.CalledProcessError:
            pass  # already stopped
        shutil.rmtree(c.root, ignore_errors=True)


def test_the_database_restarting_under_load_loses_nothing_and_answers_503_meanwhile(own_postgres, tmp_path, stories):
    import threading

    cluster, _ = own_postgres
    load(cluster.url, tmp_path / "loader", stories)
    replicas = [start_replica(cluster.url, tmp_path / f"replica-{i}") for i in range(2)]
    statuses: list[int] = []
    unexplained: list[str] = []
    acknowledged: list[str] = []
    stop = threading.Event()

    def read() -> None:
        with httpx.Client(timeout=10) as c:
            while not stop.is_set():
                for r in replicas:
                    got = c.get(f"{r.client.base_url}/v1/articles/ukr-2/related")
                    statuses.append(got.status_code)
                    if got.status_code == 503 and ("unavailable" not in got.text or "retry-after" not in got.headers):
                        unexplained.append(got.text)
                time.sleep(0.01)

    def write() -> None:
        for i in range(30):
            replica = replicas[i % 2]
            record = article(f"w-{i}", f"Armistițiul din Marea Neagră, ziua {i}",
                             "Ucraina și Rusia discută armistițiul pe mare.", "2025-04-10T10:00:00+00:00")
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:  # what a CMS does with a 503: retry
                got = replica.client.put(f"/v1/articles/w-{i}", json=record, headers=AUTH)
                statuses.append(got.status_code)
                if got.status_code == 200:
                    acknowledged.append(f"w-{i}")
                    break
                time.sleep(0.2)
            time.sleep(0.05)

    threads = [threading.Thread(target=read), threading.Thread(target=write)]
    try:
        for t in threads:
            t.start()
        time.sleep(0.5)
        cluster.stop("immediate")  # as a crash would
        time.sleep(4)  # longer than a request waits for a connection
        cluster.start()
        threads[1].join(timeout=120)
        stop.set()
        threads[0].join(timeout=30)
        assert set(statuses) <= {200, 503} and 503 in statuses and unexplained == []
        assert acknowledged == [f"w-{i}" for i in range(30)]
        for r in replicas:  # every acknowledged write is there, in every replica's index
            wait_for(lambda r=r: all(r.client.get(f"/v1/articles/{a}").status_code == 200 for a in acknowledged),
                     10, "the writes reaching every replica")
        wait_for(lambda: lists_follow_every_change(cluster.url, "w-%", 30), 10, "lists resuming after the restart")
    finally:
        stop.set()
        stop_all(replicas)


def test_page_views_read_from_a_streaming_standby_and_outlive_the_primary(own_postgres, tmp_path, stories):
    primary, started = own_postgres
    load(primary.url, tmp_path / "loader", stories)
    standby = Cluster(primary.bin, new_root(), free_port())
    primary.run("pg_basebackup", "-h", "127.0.0.1", "-p", str(primary.port), "-U", "postgres",
                "-D", str(standby.root / "data"), "-R", "-X", "stream")
    standby.start()
    started.append(standby)
    replica = start_replica(primary.url, tmp_path / "replica", RECOMMENDER_DATABASE_READ_URL=standby.url)
    try:
        follow_up = article("ukr-4", "Armistițiul din Marea Neagră, semnat la Istanbul",
                            "Ucraina și Rusia semnează armistițiul pe mare; porturile ucrainene exportă cereale.",
                            "2025-04-05T10:00:00+00:00")
        assert replica.client.put("/v1/articles/ukr-4", json=follow_up, headers=AUTH).status_code == 200
        wait_for(lambda: "ukr-4" in replica.related("ukr-3"), 5, "the write reaching the list through the standby")
        primary.stop("immediate")
        for seed in ("ukr-3", "ukr-2", "fot-1"):  # precomputed lists and articles, from the standby alone
            assert replica.related(seed)
            assert replica.client.get(f"/v1/articles/{seed}").status_code == 200
        refused = replica.client.put("/v1/articles/ukr-5", json=dict(follow_up, id="ukr-5"), headers=AUTH)
        assert refused.status_code == 503 and "unavailable" in refused.json()["detail"]
    finally:
        stop_all([replica])


def test_a_profile_activated_through_the_cli_is_picked_up_by_every_replica(replicas, pg_url, tmp_path):
    from recommender.ranking.profiles import Profiles
    from recommender.store.postgres import PostgresStore

    store = PostgresStore(pg_url)
    name = Profiles(store.shelf("profiles")).save({"dense_z": 1.0, "same_section": 3.0}, "test", {}).name
    store.close()
    env = dict(os.environ, RECOMMENDER_DATA_DIR=str(tmp_path / "cli"))
    cli = subprocess.run([sys.executable, "-m", "recommender.cli", "--database-url", pg_url, "profile", "activate",
                          name], env=env, capture_output=True, text=True, timeout=120)
    assert cli.returncode == 0, cli.stdout + cli.stderr
    for r in replicas:
        wait_for(lambda r=r: r.ready()["ranking_profile"] == name, 15, "the profile reaching a replica")
    answers = [r.client.get("/v1/articles/ukr-2/related").json() for r in replicas]
    assert all(a == answers[0] for a in answers)
